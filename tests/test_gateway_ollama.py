"""The Ollama CPU tier through the real gateway: LiteLLM's own `ollama_chat/` provider against the
in-repo mock of Ollama's native API (load/mock_ollama.py: `/api/chat`, NDJSON streams, usage in
`prompt_eval_count`/`eval_count`, tool calls with object arguments), the unmodified `openai` SDK
as the client, keys on so every case checks its ledger row (self-hosted: 0 USD).

The failover case is the default demo chain `local-demo`: local-tiny (vLLM, its weights never
built, so the gateway leaves it out at start, as on a fresh clone) -> mock-ollama -> mock-gpt-4.
"""

from __future__ import annotations

import json

import pytest

from tests.faults_support import deployed_app

APP, PREFIX = "doka-ollama", "/ollama"
OLLAMA = "qwen2.5:3b"  # the model name the Ollama server gets (litellm_params.model after `ollama_chat/`)
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK_TOOL = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


def _tweak(raw: dict) -> None:
    """The default config's demo vLLM tier, its weights missing (as tests/test_readme_walk.py does)."""
    raw["model_list"].insert(0, {"model_name": "local-tiny", "provider": "vllm",
                                 "model_info": {"tier": "local", "timeout": 3, "parallel": True},
                                 "vllm": {"model_source": "/nonexistent/tiny-llama",
                                          "placement_group_config": {"bundles": [{"CPU": 1}]}}})
    raw["fallbacks"]["local-demo"] = ["local-tiny", "mock-ollama", "mock-gpt-4"]


@pytest.fixture(scope="module")
def app(ray_cluster, mock_upstream, tmp_path_factory):
    yield from deployed_app(APP, PREFIX, mock_upstream.port, str(tmp_path_factory.mktemp("ollama")), tweak=_tweak)


@pytest.fixture(scope="module")
def key(app):
    return app.new_key()


def _row(app, key, request_id: str) -> dict:
    rows = [r for r in app.ledger(key["key_id"]) if r["request_id"] == request_id]
    assert len(rows) == 1, f"{len(rows)} ledger rows for {request_id}"
    return rows[0]


def test_plain_answer_through_ollamas_api_is_free(app, key, mock):
    raw = app.openai(key).chat.completions.with_raw_response.create(
        model="mock-ollama", messages=[{"role": "user", "content": "hello from the home lab"}], max_tokens=32)
    resp = raw.parse()
    assert raw.headers["x-doka-model"] == "mock-ollama" and raw.headers["x-doka-route-reason"] == "explicit"
    assert resp.choices[0].message.content.startswith(f"mock answer from {OLLAMA} to: hello from the")
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (5, 8)  # prompt_eval_count, eval_count
    sent = mock.state()
    assert sent["counts"]["api_ollama"] == 1 and sent["by_model"] == {OLLAMA: 1}
    body = mock.last(OLLAMA)  # what the Ollama server saw: its own format, max_tokens as num_predict
    assert body["stream"] is False and body["options"]["num_predict"] == 32
    assert [(m["role"], m["content"]) for m in body["messages"]] == [("user", "hello from the home lab")]
    row = _row(app, key, raw.headers["x-doka-request-id"])
    assert (row["model"], row["status"], row["prompt_tokens"], row["completion_tokens"]) == ("mock-ollama", 200, 5, 8)
    assert row["cost_usd"] == 0.0  # self-hosted: priced at zero, not unknown


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage-asked", "usage-not-asked"])
def test_streamed_answer_charges_ollamas_counts(app, key, mock, include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    with app.openai(key).chat.completions.with_streaming_response.create(
            model="mock-ollama", messages=[{"role": "user", "content": "stream it please"}], stream=True,
            **extra) as raw:
        chunks = list(raw.parse())
        rid = raw.headers["x-doka-request-id"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(f"mock answer from {OLLAMA} to: stream it please")
    # OpenAI's shape (LiteLLM's Router stream is not): one id, the finish reason once on the last
    # choice chunk, the role on the first, usage alone on a last chunk without choices
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    usage = [c.usage for c in chunks if c.usage]
    if include_usage:
        assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(3, 8)] and chunks[-1].choices == []
    else:
        assert usage == []  # the gateway asked for it (to charge it); the client did not
    assert mock.last(OLLAMA)["stream"] is True
    row = _row(app, key, rid)
    assert (row["status"], row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (200, True, 3, 8)
    assert row["cost_usd"] == 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_tool_call_round_trip(app, key, mock, stream):
    client = app.openai(key)
    resp = client.chat.completions.create(model="mock-ollama", messages=ASK_TOOL, tools=TOOLS, stream=stream)
    if stream:
        name, args, call_id, finishes = "", "", None, []
        for c in resp:
            for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
                call_id = call_id or tc.id
            finishes += [c.choices[0].finish_reason] if c.choices else []
        assert not any(finishes[:-1])  # once, on the last chunk
        finish = finishes[-1]
    else:
        call = resp.choices[0].message.tool_calls[0]
        name, args, call_id, finish = call.function.name, call.function.arguments, call.id, resp.choices[0].finish_reason
    assert (name, json.loads(args), finish) == ("get_weather", {"city": "mock"}, "tool_calls") and call_id
    assert mock.last(OLLAMA)["tools"][0]["function"]["name"] == "get_weather"
    back = [*ASK_TOOL, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"}]
    answer = client.chat.completions.create(model="mock-ollama", messages=back, tools=TOOLS)
    assert answer.choices[0].message.content == f"mock answer from {OLLAMA}: the tool said sunny, 21 C"
    sent = mock.last(OLLAMA)["messages"]  # Ollama's shape: arguments an object, the result a `tool` turn
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "mock"}}
    assert sent[2]["role"] == "tool" and sent[2]["content"] == "sunny, 21 C"


def test_structured_output_through_ollamas_format(app, key, mock):
    """The SDK's `parse` (a strict json_schema): LiteLLM sends Ollama the schema as `format`; the
    JSON comes back as content, plain and streamed."""
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    client = app.openai(key)
    ask = dict(model="mock-ollama", messages=[{"role": "user", "content": "John is 30"}])
    assert client.chat.completions.parse(response_format=Person, **ask).choices[0].message.parsed == Person(
        name="mock", age=1)
    assert mock.last(OLLAMA)["format"]["properties"].keys() == {"name", "age"}
    with client.chat.completions.stream(response_format=Person, **ask) as stream:
        assert stream.get_final_completion().choices[0].message.parsed == Person(name="mock", age=1)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_demo_chain_falls_from_a_dead_vllm_tier_to_ollama_then_openai(app, key, mock, stream):
    """Each step in order, its route reason in the headers and on its ledger row."""
    client = app.openai(key)
    steps = []
    for fault in ({}, {OLLAMA: "503"}):  # Ollama up, then Ollama failing too
        mock.state(faults=fault)
        with client.chat.completions.with_streaming_response.create(
                model="local-demo", messages=[{"role": "user", "content": "hi"}], stream=stream) as raw:
            parsed = raw.parse()
            text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) if stream \
                else parsed.choices[0].message.content
            steps.append((raw.headers["x-doka-model"], raw.headers["x-doka-route-reason"],
                          raw.headers["x-doka-tiers-tried"], text, raw.headers["x-doka-request-id"]))
    (m1, why1, tried1, text1, rid1), (m2, why2, tried2, text2, rid2) = steps
    # the vLLM tier that could not start is skipped, never called (deployments/tier_apps.py)
    assert (m1, why1, tried1) == ("mock-ollama", "fallback:tier2;skipped=local-tiny:down", "mock-ollama")
    assert text1.startswith(f"mock answer from {OLLAMA}")
    assert (m2, why2, tried2) == ("mock-gpt-4", "fallback:tier3;skipped=local-tiny:down", "mock-ollama,mock-gpt-4")
    assert text2.startswith("mock answer from gpt-4-turbo")
    assert mock.state()["counts"]["fault_503"] == 1
    rows = [_row(app, key, rid1), _row(app, key, rid2)]
    assert [(r["model"], r["status"], r["route_reason"]) for r in rows] == [
        ("mock-ollama", 200, "fallback:tier2;skipped=local-tiny:down"),
        ("mock-gpt-4", 200, "fallback:tier3;skipped=local-tiny:down")]
    assert rows[0]["cost_usd"] == 0.0 and rows[1]["cost_usd"] > 0
