"""The mock upstream itself: OpenAI shapes, streaming, usage, faults and its counters."""

from __future__ import annotations

import json

import httpx
import pytest

from load.mock_upstream import parse_faults


def _chat(mock, **extra):
    return httpx.post(f"{mock.url}/v1/chat/completions", timeout=10,
                      json={"model": "m1", "messages": [{"role": "user", "content": "hello there"}], **extra})


def test_chat_plain_has_openai_shape_and_usage(mock):
    r = _chat(mock)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"].startswith("mock answer from m1")
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_chat_stream_sends_chunks_usage_and_done(mock):
    with httpx.stream("POST", f"{mock.url}/v1/chat/completions", timeout=10,
                      json={"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len(chunks) == 10  # 8 content chunks, the finish chunk, the usage chunk (no choices, as OpenAI)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[-2]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    assert mock.state()["counts"]["streams_completed"] == 1


def test_a_json_response_format_gets_an_instance_of_its_schema(mock):
    schema = {"type": "object", "required": ["who", "tags", "next"],
              "properties": {"who": {"$ref": "#/$defs/P"}, "tags": {"type": "array", "items": {"type": "string"}},
                             "next": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
                             "mode": {"enum": ["fast", "slow"]}},
              "$defs": {"P": {"type": "object", "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}}}}}
    r = _chat(mock, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {
        "who": {"name": "mock", "ok": True}, "tags": ["mock"], "next": 1, "mode": "fast"}
    r = _chat(mock, response_format={"type": "json_object"})
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"answer": "mock"}
    # json_object with the schema in the prompt (Instructor's JSON mode): an instance of it
    prompted = [{"role": "system", "content": f"Return JSON matching this json_schema:\n\n{json.dumps(schema)}\n"},
                {"role": "user", "content": "hello there"}]
    r = _chat(mock, response_format={"type": "json_object"}, messages=prompted)
    assert json.loads(r.json()["choices"][0]["message"]["content"])["tags"] == ["mock"]
    assert _chat(mock, response_format={"type": "text"}).json()["choices"][0]["message"]["content"].startswith("mock answer")


def test_completions_endpoint(mock):
    r = httpx.post(f"{mock.url}/v1/completions", json={"model": "m1", "prompt": "once upon"}, timeout=10)
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
    assert r.json()["choices"][0]["text"]


@pytest.mark.parametrize("fault,status", [("500", 500), ("503", 503), ("429", 429)])
def test_http_faults_per_model(mock, fault, status):
    mock.state(faults={"m1": fault})
    r = _chat(mock)
    assert r.status_code == status and r.json()["error"]["message"].startswith("mock fault")
    assert _chat(mock, model="m2").status_code == 200  # other models stay healthy


def test_timeout_fault_never_answers(mock):
    mock.state(faults={"*": "timeout"})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{mock.url}/v1/chat/completions", timeout=0.5,
                   json={"model": "m1", "messages": [{"role": "user", "content": "x"}]})


def test_drop_fault_breaks_the_stream(mock):
    mock.state(faults={"*": "drop"})
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", f"{mock.url}/v1/chat/completions", timeout=5,
                          json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "stream": True}) as r:
            for _ in r.iter_lines():
                pass
    assert mock.state()["counts"]["fault_drop"] == 1


def test_client_closing_a_stream_is_counted_as_cancelled(mock):
    import time

    mock.state(chunks=40, chunk_interval_ms=100)
    with httpx.stream("POST", f"{mock.url}/v1/chat/completions", timeout=10,
                      json={"model": "m1", "messages": [{"role": "user", "content": "x"}], "stream": True}) as r:
        it = r.iter_lines()
        next(it)
    deadline = time.time() + 10
    while time.time() < deadline and not mock.state()["counts"].get("streams_cancelled"):
        time.sleep(0.1)
    assert mock.state()["counts"]["streams_cancelled"] == 1


def test_parse_faults():
    assert parse_faults(["500", "gpt-4=timeout"]) == {"*": "500", "gpt-4": "timeout"}
    with pytest.raises(Exception, match="unknown fault"):
        parse_faults(["boom"])


# ---------------------------------------------------------------- provider-format mocks
def test_anthropic_mock_errors_in_anthropic_shape_including_529(mock):
    body = {"model": "c1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    ok = httpx.post(f"{mock.url}/v1/messages", json=body, headers={"x-api-key": "k"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["type"] == "message" and ok.json()["usage"]["input_tokens"] == 1
    assert httpx.post(f"{mock.url}/v1/messages", json=body, timeout=10).status_code == 401  # no key
    mock.state(faults={"c1": "529"})
    r = httpx.post(f"{mock.url}/v1/messages", json=body, headers={"x-api-key": "k"}, timeout=10)
    assert r.status_code == 529
    assert r.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def test_anthropic_mock_streams_messages_events(mock):
    body = {"model": "c1", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{mock.url}/v1/messages", json=body, headers={"x-api-key": "k"}, timeout=10) as r:
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(events)


def test_gemini_mock_sse_and_function_call(mock):
    url = f"{mock.url}/v1beta/models/g1:streamGenerateContent?alt=sse"
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    with httpx.stream("POST", url, json=body, headers={"x-goog-api-key": "k"}, timeout=10) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert len(chunks) > 1 and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["promptTokenCount"] == 1
    tools = [{"functionDeclarations": [{"name": "f", "parameters": {"type": "object",
                                                                     "properties": {"n": {"type": "integer"}}}}]}]
    r = httpx.post(f"{mock.url}/v1beta/models/g1:generateContent", headers={"x-goog-api-key": "k"}, timeout=10,
                   json={"contents": [{"role": "user", "parts": [{"text": "call the tool"}]}], "tools": tools})
    assert r.json()["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "f", "args": {"n": 1}}}]
    mock.state(faults={"g1": "429"})
    err = httpx.post(f"{mock.url}/v1beta/models/g1:generateContent", json=body, headers={"x-goog-api-key": "k"})
    assert err.status_code == 429 and err.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_anthropic_and_gemini_mocks_answer_json_when_asked(mock):
    """Anthropic's structured outputs (`output_format`); Gemini's JSON mode with `responseSchema`, or
    with the schema in the prompt, as LiteLLM writes it for a model it thinks takes none."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}
    body = {"model": "c1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
            "output_format": {"type": "json_schema", "schema": schema}}
    r = httpx.post(f"{mock.url}/v1/messages", json=body, headers={"x-api-key": "k"}, timeout=10)
    assert json.loads(r.json()["content"][0]["text"]) == {"n": 1, "s": "mock"}
    url = f"{mock.url}/v1beta/models/g1:generateContent"
    for config, text in [({"responseMimeType": "application/json", "responseSchema": schema}, "hi"),
                         ({"response_mime_type": "application/json"}, f"Use this JSON schema: \n```json \n{schema}\n```")]:
        body = {"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": config}
        r = httpx.post(url, json=body, headers={"x-goog-api-key": "k"}, timeout=10)
        assert json.loads(r.json()["candidates"][0]["content"]["parts"][0]["text"]) == {"n": 1, "s": "mock"}


def test_cohere_mock_and_last_body(mock):
    body = {"model": "r1", "messages": [{"role": "user", "content": "hello"}]}
    r = httpx.post(f"{mock.url}/v2/chat", json=body, headers={"Authorization": "Bearer k"}, timeout=10)
    assert r.json()["finish_reason"] == "COMPLETE" and r.json()["usage"]["tokens"]["input_tokens"] == 1
    assert httpx.get(f"{mock.url}/_mock/last/r1", timeout=5).json() == body
    assert mock.state()["counts"]["api_cohere"] == 1
