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
    assert len(chunks) == 9  # 8 content chunks + the finish chunk
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["completion_tokens"] == 8
    assert mock.state()["counts"]["streams_completed"] == 1


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
