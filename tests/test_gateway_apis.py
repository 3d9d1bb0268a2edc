"""The endpoints beyond chat, through a keys-on gateway, with the unmodified SDKs.

`/v1/messages` (anthropic SDK: plain, streaming, tool use round trip, count_tokens, errors in
Anthropic's shape, client cancel), `/v1/embeddings` (openai SDK: float, base64, the SDK's
default base64 decoding, list input) and `/v1/responses` (openai SDK: plain and streaming).
Every model call must leave exactly one ledger row with the answer's tokens and cost, and no
reservation open. The backend is the OpenAI-format mock (mock-gpt-3.5, mock-embed).
"""

from __future__ import annotations

import base64
import struct
import time

import anthropic
import httpx
import openai
import pytest

from load.mock_openai_extras import embed
from tests.faults_support import deploy_app

WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, tmp_path_factory):
    from ray import serve

    app = deploy_app("doka-apis", "/apis", mock_upstream.port, str(tmp_path_factory.mktemp("apis")))
    yield app
    serve.delete(app.name)


@pytest.fixture()
def key(gw, mock):
    return gw.new_key(tokens_per_day=10_000_000)


def claude(gw, key) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key["key"], max_retries=0)


def oai(gw, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key["key"], max_retries=0)


def row_of(gw, key, request_id: str) -> dict:
    rows = [r for r in gw.ledger(key["key_id"]) if r["request_id"] == request_id]
    assert len(rows) == 1, rows
    return rows[0]


def settled(gw, key, n: int, timeout: float = 10) -> list[dict]:
    """The key's ledger rows once there are `n` of them and nothing is reserved any more."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = gw.ledger(key["key_id"])
        if len(rows) >= n and gw.inflight(key["key_id"]) == 0:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"ledger {gw.ledger(key['key_id'])}, inflight {gw.inflight(key['key_id'])}")


# ------------------------------------------------------------------ /v1/messages
def test_messages_plain_with_usage_and_ledger_row(gw, key):
    raw = claude(gw, key).messages.with_raw_response.create(
        model="mock-gpt-3.5", max_tokens=64, system="Answer briefly.",
        messages=[{"role": "user", "content": "hello there"}])
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "mock-gpt-3.5"
    assert msg.content[0].type == "text" and msg.content[0].text.startswith("mock answer from gpt-3.5-turbo")
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens > 0 and msg.usage.output_tokens == 8
    row = row_of(gw, key, raw.headers["x-doka-request-id"])
    assert (row["status"], row["model"], row["prompt_tokens"], row["completion_tokens"]) == (
        200, "mock-gpt-3.5", msg.usage.input_tokens, msg.usage.output_tokens)
    assert row["cost_usd"] == pytest.approx(msg.usage.input_tokens * 1e-6 + msg.usage.output_tokens * 2e-6)
    assert gw.inflight(key["key_id"]) == 0


def test_messages_stream_text_and_final_usage(gw, key):
    client = claude(gw, key)
    with client.messages.stream(model="mock-gpt-3.5", max_tokens=64,
                                messages=[{"role": "user", "content": "stream please"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        rid = stream.response.headers["x-doka-request-id"]
    assert text.startswith("mock answer from gpt-3.5-turbo") and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8 and final.usage.input_tokens > 0
    row = row_of(gw, key, rid)
    assert (row["status"], row["stream"], row["completion_tokens"]) == (200, True, 8)
    assert gw.inflight(key["key_id"]) == 0


def test_messages_tool_use_round_trip_plain_and_streamed(gw, key, mock):
    client = claude(gw, key)
    ask = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    first = client.messages.create(model="mock-gpt-3.5", max_tokens=64, tools=[WEATHER], messages=ask)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "mock"} and use.id
    # the same turn streamed: tool_use block start + input_json_delta pieces, parsed by the SDK
    with client.messages.stream(model="mock-gpt-3.5", max_tokens=64, tools=[WEATHER], messages=ask,
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        events = [e.type for e in stream]
        streamed = stream.get_final_message()
    assert "input_json" in events and streamed.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in streamed.content] == [("tool_use", "get_weather", {"city": "mock"})]
    # the tool result goes back; the model answers in text
    done = client.messages.create(model="mock-gpt-3.5", max_tokens=64, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]}])
    assert done.stop_reason == "end_turn" and done.content[0].type == "text"
    assert len(settled(gw, key, 3)) == 3


def test_messages_bad_requests_in_anthropic_shape(gw, key):
    client = claude(gw, key)
    # the SDK itself refuses to send a body without max_tokens: send it raw
    r = httpx.post(gw.url + "/v1/messages", headers={"x-api-key": key["key"]}, timeout=30,
                   json={"model": "mock-gpt-3.5", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.headers.get("x-doka-request-id")
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="mock-gpt-3.5", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 400 and e.value.response.headers.get("x-doka-request-id")
    assert e.value.body["type"] == "error" and "max_tokens" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=gw.url, api_key="sk-wrong", max_retries=0).messages.create(
            model="mock-gpt-3.5", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError):  # an embedding model cannot chat
        client.messages.create(model="mock-embed", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert gw.inflight(key["key_id"]) == 0


def test_openapi_lists_every_endpoint_with_its_body(gw):
    spec = httpx.get(gw.url + "/openapi.json", timeout=30).json()
    for path, field in (("/v1/messages", "max_tokens"), ("/v1/messages/count_tokens", "messages"),
                        ("/v1/embeddings", "input"), ("/v1/responses", "input"), ("/v1/chat/completions", "messages")):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["required"], (path, schema)


def test_messages_count_tokens(gw, key):
    count = claude(gw, key).messages.count_tokens(model="mock-gpt-3.5",
                                                  messages=[{"role": "user", "content": "count these words " * 10}])
    assert count.input_tokens > 40
    assert [r["status"] for r in settled(gw, key, 1)] == [200]  # a row, nothing charged


def test_messages_stream_cancel_settles_499(gw, key, mock):
    mock.state(chunks=100, chunk_interval_ms=100)  # a 10 s answer
    with httpx.stream("POST", gw.url + "/v1/messages", timeout=20, headers={"x-api-key": key["key"]},
                      json={"model": "mock-gpt-3.5", "max_tokens": 200, "stream": True,
                            "messages": [{"role": "user", "content": "long"}]}) as r:
        assert r.status_code == 200
        rid = r.headers["x-doka-request-id"]
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert "event: message_start" in got
    rows = settled(gw, key, 1)
    assert [(row["request_id"], row["status"]) for row in rows] == [(rid, 499)]
    assert gw.inflight(key["key_id"]) == 0


# ------------------------------------------------------------------ /v1/embeddings
def test_embeddings_float_base64_and_sdk_default(gw, key):
    client = oai(gw, key)
    raw = client.embeddings.with_raw_response.create(model="mock-embed", input=["hello world", "second text"],
                                                     encoding_format="float")
    floats = raw.parse()
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 64
    assert floats.data[0].embedding == pytest.approx(embed("text-embedding-3-small", "hello world"))
    assert floats.usage.prompt_tokens == 4
    b64 = client.embeddings.create(model="mock-embed", input="hello world", encoding_format="base64")
    packed = base64.b64decode(b64.data[0].embedding)
    assert list(struct.unpack("<64f", packed)) == pytest.approx(floats.data[0].embedding, abs=1e-6)
    default = client.embeddings.create(model="mock-embed", input="hello world")  # SDK asks base64, decodes
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    row = row_of(gw, key, raw.headers["x-doka-request-id"])
    assert (row["status"], row["model"], row["prompt_tokens"], row["completion_tokens"]) == (200, "mock-embed", 4, 0)
    assert row["cost_usd"] == pytest.approx(4 * 2e-8)
    assert len(settled(gw, key, 3)) == 3


def test_embeddings_refuse_chat_models_and_chat_refuses_embedders(gw, key):
    client = oai(gw, key)
    for model in ("mock-gpt-3.5", "auto"):
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model=model, input="x")
        assert e.value.code == "model_not_supported" and "mock-embed" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="mock-embed", messages=[{"role": "user", "content": "x"}])
    assert "embedding model" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="mock-embed", input=[])
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="mock-embed", input="x", extra_body={"stream": True})
    models = {m.id: m for m in client.models.list().data}
    assert models["mock-embed"].doka["mode"] == "embedding"
    assert "mock-embed" not in models["auto"].doka["candidates"]
    assert gw.inflight(key["key_id"]) == 0


# ------------------------------------------------------------------ /v1/responses
def test_responses_plain_and_stream(gw, key):
    client = oai(gw, key)
    raw = client.responses.with_raw_response.create(model="mock-gpt-3.5", input="hello responses",
                                                    instructions="Be brief.", max_output_tokens=64)
    resp = raw.parse()
    assert resp.object == "response" and resp.status == "completed"
    assert resp.output_text.startswith("mock answer from gpt-3.5-turbo")
    assert resp.usage.output_tokens == 8 and resp.usage.input_tokens > 0
    row = row_of(gw, key, raw.headers["x-doka-request-id"])
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == (200, resp.usage.input_tokens, 8)

    events = list(client.responses.create(model="mock-gpt-3.5", stream=True, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "stream responses"}]}]))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas == done.text and deltas.startswith("mock answer")
    assert events[-1].response.usage.output_tokens == 8 and events[-1].response.output_text == deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len(settled(gw, key, 2)) == 2

    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="mock-gpt-3.5", input="again", previous_response_id=resp.id)
    assert e.value.param == "previous_response_id"
    assert gw.inflight(key["key_id"]) == 0


# ------------------------------------------------------------------ same chains, same settlement
def test_messages_fall_back_route_auto_and_settle_errors_once(gw, key, mock):
    client = claude(gw, key)
    mock.state(faults={"mixtral-8x7b": "503"})  # chain default: mock-mixtral -> mock-gpt-4
    raw = client.messages.with_raw_response.create(model="mock-mixtral", max_tokens=32,
                                                   messages=[{"role": "user", "content": "fall back"}])
    assert raw.headers["x-doka-route-reason"] == "fallback:tier2" and raw.headers["x-doka-model"] == "mock-gpt-4"
    assert raw.parse().content[0].text.startswith("mock answer from gpt-4-turbo")
    auto = client.messages.with_raw_response.create(model="auto", max_tokens=32,
                                                    messages=[{"role": "user", "content": "route me"}])
    assert auto.headers["x-doka-route-reason"].startswith(("auto:", "fallback:"))
    # a stream cut mid-way: Anthropic's error event, one 502 row, nothing left reserved
    mock.state(faults={"gpt-3.5-turbo": "drop"})
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model="mock-gpt-3.5", max_tokens=32,
                                    messages=[{"role": "user", "content": "drop me"}]) as stream:
            for _ in stream:
                pass
    rows = settled(gw, key, 3)
    assert sorted(r["status"] for r in rows) == [200, 200, 502]
    # an embedding provider failing: 502 in OpenAI's shape, one row
    mock.state(faults={"text-embedding-3-small": "500"})
    with pytest.raises(openai.InternalServerError) as e:
        oai(gw, key).embeddings.create(model="mock-embed", input="x")
    assert e.value.status_code == 502
    assert sorted(r["status"] for r in settled(gw, key, 4)) == [200, 200, 502, 502]


def test_responses_tool_call_and_stream_cancel(gw, key, mock):
    client = oai(gw, key)
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER["input_schema"]}]
    resp = client.responses.create(model="mock-gpt-3.5", input="weather in Paris? use the tool", tools=tools)
    call = next(o for o in resp.output if o.type == "function_call")
    assert call.name == "get_weather" and call.arguments == '{"city": "mock"}'
    done = client.responses.create(model="mock-gpt-3.5", tools=tools, input=[
        {"role": "user", "content": "weather in Paris? use the tool"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert done.output_text.startswith("mock answer")
    mock.state(chunks=100, chunk_interval_ms=100)
    with httpx.stream("POST", gw.url + "/v1/responses", timeout=20, headers={"Authorization": f"Bearer {key['key']}"},
                      json={"model": "mock-gpt-3.5", "input": "long", "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert "event: response.created" in [next(lines) for _ in range(8)]
    rows = settled(gw, key, 3)
    assert sorted(r["status"] for r in rows) == [200, 200, 499]
