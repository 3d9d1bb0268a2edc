"""Provider-format models through the real gateway: LiteLLM's translation against mock providers
that speak Anthropic's, Gemini's and Cohere's own wire formats (load/mock_anthropic.py, ...).

Keys on (its own app beside the session gateway, like the fault tests), so every case also
checks its ledger row. Clients are the unmodified `openai` and `litellm` SDKs. Error mapping:
a provider's 400 is the client's (400), 429 stays 429, Anthropic's 529 "overloaded" is 503, and
a 401 (the provider refusing the *gateway's* credentials) is the gateway's problem: 502.
"""

from __future__ import annotations

import copy
import json

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.faults_support import deployed_app

APP, PREFIX = "doka-providers", "/providers"
CLAUDE, GEMINI, COHERE = "claude-3-5-sonnet-20241022", "gemini-1.5-flash", "command-r-plus"
UPSTREAM = {"mock-claude": CLAUDE, "mock-gemini": GEMINI, "mock-command-r": COHERE}
API = {"mock-claude": "anthropic", "mock-gemini": "gemini", "mock-command-r": "cohere"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK_TOOL = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


def _tweak(raw: dict) -> None:
    # mock-claude belongs to claude-chain, so asked for by name it falls back too; a copy outside
    # every chain shows what a client sees when the Anthropic tier alone fails
    claude = next(m for m in raw["model_list"] if m["model_name"] == "mock-claude")
    raw["model_list"].append({**copy.deepcopy(claude), "model_name": "mock-claude-direct"})
    lenient = copy.deepcopy(claude)  # the operator's choice: drop what Anthropic cannot take
    lenient["litellm_params"]["drop_params"] = True
    raw["model_list"].append({**lenient, "model_name": "mock-claude-lenient"})
    # Cohere (LiteLLM's full Router path) gets an egress of its own
    raw["deployments"]["egress_translated"] = {"num_cpus": 0.1, "max_ongoing_requests": 256}


@pytest.fixture(scope="module")
def app(ray_cluster, mock_upstream, tmp_path_factory):
    yield from deployed_app(APP, PREFIX, mock_upstream.port, str(tmp_path_factory.mktemp("providers")), tweak=_tweak)


@pytest.fixture(scope="module")
def key(app):
    return app.new_key()


def _row(app, key, request_id: str) -> dict:
    rows = {r["request_id"]: r for r in app.ledger(key["key_id"])}
    assert request_id in rows, f"no ledger row for {request_id}"
    return rows[request_id]


def _cost(app, model: str, usage) -> float:
    info = next(m for m in app.raw["model_list"] if m["model_name"] == model)["model_info"]
    return usage.prompt_tokens * info["input_cost_per_token"] + usage.completion_tokens * info["output_cost_per_token"]


def _last_body(mock, upstream: str) -> dict:
    r = httpx.get(f"{mock.url}/_mock/last/{upstream}", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_router_path_models_have_an_egress_of_their_own(app):
    from ray import serve

    from app.config import parse_config
    from deployments.egress_paths import uses_router_path

    deployments = serve.status().applications[APP].deployments
    # the rest are called from the ingress (egress.placement: ingress, config/default.yaml)
    assert "EgressTranslated" in deployments and "Egress" not in deployments
    heavy = {m.model_name for m in parse_config(app.raw).model_list
             if m.provider == "litellm" and uses_router_path(m.litellm_params)}
    # Anthropic and Gemini take the direct translation; Cohere and Ollama LiteLLM's Router path
    assert heavy == {"mock-command-r", "mock-ollama"}


@pytest.mark.parametrize("model", ["mock-claude", "mock-gemini", "mock-command-r"])
def test_chat_is_translated_and_billed(app, key, mock, model):
    raw = app.openai(key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=64)
    resp = raw.parse()
    assert raw.headers["x-doka-model"] == model
    assert resp.choices[0].message.content.startswith(f"mock answer from {UPSTREAM[model]} to: hello there")
    assert resp.usage.prompt_tokens == 2 and resp.usage.completion_tokens == 8
    assert mock.state()["counts"][f"api_{API[model]}"] == 1  # the provider's own API, not OpenAI's
    sent = _last_body(mock, UPSTREAM[model])
    assert "messages" not in sent if model == "mock-gemini" else "messages" in sent
    row = _row(app, key, raw.headers["x-doka-request-id"])
    assert (row["model"], row["status"], row["prompt_tokens"], row["completion_tokens"]) == (model, 200, 2, 8)
    assert row["cost_usd"] == pytest.approx(_cost(app, model, resp.usage))


@pytest.mark.parametrize("model", ["mock-claude", "mock-gemini"])
def test_stream_is_translated_with_usage_and_billed(app, key, mock, model):
    raw = app.openai(key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=64, stream=True,
        stream_options={"include_usage": True})
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(f"mock answer from {UPSTREAM[model]} to: hello there")
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one blob
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])  # once, last, as OpenAI (clients stop there)
    usage = next(c.usage for c in reversed(chunks) if c.usage)
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 8)
    assert mock.state()["counts"]["streams_completed"] == 1
    row = _row(app, key, raw.headers["x-doka-request-id"])
    assert row["stream"] and (row["model"], row["status"], row["completion_tokens"]) == (model, 200, 8)
    assert row["cost_usd"] == pytest.approx(_cost(app, model, usage))


@pytest.mark.parametrize("model", ["mock-claude", "mock-gemini", "mock-command-r"])
def test_tool_call_round_trip(app, key, mock, model):
    client = app.openai(key)
    first = client.chat.completions.create(model=model, messages=ASK_TOOL, tools=TOOLS, max_tokens=64)
    call = first.choices[0].message.tool_calls[0]
    if model != "mock-command-r":  # LiteLLM 1.106's Cohere v2 mapping leaves finish_reason "stop"
        assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "mock"}
    sent = _last_body(mock, UPSTREAM[model])  # the tool definition reached the provider in its own shape
    if model == "mock-claude":
        assert sent["tools"][0]["name"] == "get_weather" and "input_schema" in sent["tools"][0]
    elif model == "mock-gemini":
        decl = sent["tools"][0].get("function_declarations") or sent["tools"][0]["functionDeclarations"]
        assert decl[0]["name"] == "get_weather"
    messages = [*ASK_TOOL, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny 21C"}]
    second = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=64)
    assert "the tool said" in second.choices[0].message.content and "sunny 21C" in second.choices[0].message.content


@pytest.mark.parametrize("model", ["mock-claude", "mock-gemini"])
def test_streamed_tool_call(app, key, mock, model):
    stream = app.openai(key).chat.completions.create(model=model, messages=ASK_TOOL, tools=TOOLS,
                                                       max_tokens=64, stream=True)
    name, args, finishes = "", "", []
    for c in stream:
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            name += tc.function.name or ""
            args += tc.function.arguments or ""
        finishes.append(c.choices[0].finish_reason)
    assert name == "get_weather" and json.loads(args) == {"city": "mock"}
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("model", ["mock-claude", "mock-gemini"])
def test_structured_output_with_the_sdks_parse_helper(app, key, mock, model):
    """A json_schema `response_format` (Instructor's JSON_SCHEMA mode, the SDK's `parse`): Anthropic
    is asked through a forced tool and Gemini through `responseSchema`; either way the client gets
    the JSON as the message content, plain and streamed, as OpenAI answers it."""
    client = app.openai(key)
    ask = dict(model=model, messages=[{"role": "user", "content": "John is 30"}], max_tokens=64)
    parsed = client.chat.completions.parse(response_format=Person, **ask).choices[0]
    assert parsed.message.parsed == Person(name="mock", age=1) and not parsed.message.tool_calls
    assert parsed.finish_reason == "stop"
    sent = _last_body(mock, UPSTREAM[model])
    if model == "mock-claude":
        assert sent["tool_choice"] == {"type": "tool", "name": "json_tool_call"}
    else:
        # LiteLLM's map says gemini-1.5-flash takes no responseSchema: JSON mode, the schema in the prompt
        config = sent.get("generationConfig") or sent["generation_config"]
        assert (config.get("responseMimeType") or config["response_mime_type"]) == "application/json"
        assert "Use this JSON schema" in json.dumps(sent["contents"])
    with client.chat.completions.stream(response_format=Person, **ask) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.message.parsed == Person(name="mock", age=1) and not final.message.tool_calls


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_failing_anthropic_tier_falls_back_to_openai(app, key, mock, stream):
    mock.state(faults={CLAUDE: "529"})
    raw = app.openai(key).chat.completions.with_raw_response.create(
        model="claude-chain", messages=[{"role": "user", "content": "hi"}], max_tokens=16, stream=stream)
    body = raw.parse()
    text = "".join(c.choices[0].delta.content or "" for c in body if c.choices) if stream else \
        body.choices[0].message.content
    assert raw.headers["x-doka-model"] == "mock-gpt-4" and raw.headers["x-doka-route-reason"] == "fallback:tier2"
    assert raw.headers["x-doka-tiers-tried"] == "mock-claude,mock-gpt-4"
    assert text.startswith("mock answer from gpt-4-turbo")
    assert mock.state()["counts"]["fault_529"] == 1
    row = _row(app, key, raw.headers["x-doka-request-id"])
    assert (row["model"], row["status"], row["route_reason"]) == ("mock-gpt-4", 200, "fallback:tier2")


@pytest.mark.parametrize("model,upstream", [("mock-claude-direct", CLAUDE), ("mock-gemini", GEMINI)])
@pytest.mark.parametrize("fault,status,exc", [
    ("400", 400, openai.BadRequestError),
    ("401", 502, openai.InternalServerError),  # the provider refused the gateway's key: not the client's fault
    ("429", 429, openai.RateLimitError),
    ("529", 503, openai.InternalServerError),
])
def test_provider_errors_map_to_openai_errors(app, key, mock, model, upstream, fault, status, exc):
    mock.state(faults={upstream: fault})
    with pytest.raises(exc) as err:
        app.openai(key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=16)
    assert err.value.status_code == status
    body = err.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    if status in (429, 503):
        assert err.value.response.headers["retry-after"] == "1"
    row = _row(app, key, err.value.response.headers["x-doka-request-id"])
    assert row["status"] == status and not row["cost_usd"]
    assert app.inflight(key["key_id"]) == 0  # the reservation was released


def test_stream_error_before_first_chunk_is_mapped(app, key, mock):
    mock.state(faults={CLAUDE: "429"})
    with pytest.raises(openai.RateLimitError):
        app.openai(key).chat.completions.create(model="mock-claude-direct", stream=True, max_tokens=16,
                                                  messages=[{"role": "user", "content": "hi"}])
    assert app.inflight(key["key_id"]) == 0


def test_litellm_sdk_as_a_client(app, key, mock):
    import litellm

    kw = {"model": "openai/mock-claude", "api_base": f"{app.url}/v1", "api_key": key["key"],
          "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 32}
    resp = litellm.completion(**kw)
    assert resp.choices[0].message.content.startswith(f"mock answer from {CLAUDE}")
    text = "".join(c.choices[0].delta.content or "" for c in litellm.completion(**kw, stream=True))
    assert text.startswith(f"mock answer from {CLAUDE}")
    assert mock.state()["counts"]["api_anthropic"] == 2


def test_pass_through_keeps_tool_calls_and_image_parts_unchanged(app, key, mock):
    """The OpenAI pass-through path sends the client's body as it came, only `model` renamed."""
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image, and what is the weather there?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE=",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny 21C"},
    ]
    body = {"model": "mock-gpt-4", "messages": messages, "tools": TOOLS, "tool_choice": "auto", "max_tokens": 32,
            "temperature": 0.2}
    resp = app.openai(key).chat.completions.create(**body)
    assert resp.choices[0].message.content
    assert _last_body(mock, "gpt-4-turbo") == {**body, "model": "gpt-4-turbo"}


# ---------------------------------------------------------------- the direct Anthropic path
def _core(mock):
    from app.config import parse_config
    from deployments.egress import EgressCore
    from tests.conftest import gateway_test_config

    return EgressCore(parse_config(gateway_test_config(mock.port, 1)), cooldown_s=0)


def _summary(result: dict) -> tuple:
    msg = result["choices"][0]["message"]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg.get("tool_calls") or []]
    usage = result["usage"]
    return msg.get("content"), calls, result["choices"][0]["finish_reason"], usage["prompt_tokens"], usage["completion_tokens"]


async def _stream_summary(chunks) -> tuple:
    text, args, finishes, usage, roles = "", "", [], None, []
    async for c in chunks:
        usage = c.get("usage") or usage
        for ch in c["choices"]:
            d = ch.get("delta") or {}
            roles.append(d.get("role"))
            text += d.get("content") or ""
            args += "".join((t.get("function") or {}).get("arguments") or "" for t in d.get("tool_calls") or [])
            finishes += [ch["finish_reason"]] if ch.get("finish_reason") else []
    return text, args, finishes, (usage or {}).get("completion_tokens"), roles[0]


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 32, "temperature": 0.1},
    {"messages": ASK_TOOL, "tools": TOOLS, "max_tokens": 32},
    {"messages": [{"role": "system", "content": "be brief"}, *ASK_TOOL,
                  {"role": "assistant", "content": None, "tool_calls": [{"id": "toolu_1", "type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny 21C"}], "tools": TOOLS, "max_tokens": 32},
    {"messages": [{"role": "user", "content": "John is 30"}], "max_tokens": 32, "response_format": {
        "type": "json_schema", "json_schema": {"name": "Person", "schema": Person.model_json_schema()}}},
], ids=["text", "tool-call", "tool-result", "response-format"])
@pytest.mark.parametrize("model", ["mock-claude", "mock-gemini"])
def test_direct_anthropic_path_matches_litellm_router(mock, body, model):
    """The egress's direct translation answers as LiteLLM's full Router.acompletion does."""
    import asyncio

    core = _core(mock)
    params = core._single[model]["litellm_params"]
    direct = core.directs[params["model"].partition("/")[0]]
    assert direct.handles(params, body)

    async def both():
        try:
            plain = await direct.call(core.session(), params, body, 10)
            full = await core._litellm_call("chat", model, body, 10)
            sbody = {**body, "stream_options": {"include_usage": True}}
            s_direct = await _stream_summary(direct.stream(core.session(), params, sbody, 10))
            s_full = await _stream_summary(core._litellm_stream("chat", model, sbody, 10))
            return plain, full, s_direct, s_full
        finally:
            await core.close()

    plain, full, s_direct, s_full = asyncio.run(both())
    assert _summary(plain) == _summary(full)
    assert s_direct == s_full and s_direct[4] == "assistant"
    assert mock.state()["counts"][f"api_{API[model]}"] == 4


def test_direct_anthropic_path_leaves_unmapped_params_to_litellm(mock):
    core = _core(mock)
    params = core._single["mock-claude"]["litellm_params"]
    assert not core.direct.handles(params, {"messages": [], "logprobs": True})  # Router.acompletion decides
    assert not core.direct.handles(core._single["mock-gemini"]["litellm_params"], {"messages": []})
    assert core.direct.handles({**params, "drop_params": True}, {"messages": [], "logprobs": True})  # dropped here


def test_request_litellm_cannot_translate_is_a_400(app, key, mock):
    """A malformed image part: LiteLLM's Anthropic transformation refuses it, the client gets 400."""
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        app.openai(key).chat.completions.create(model="mock-claude", messages=bad, max_tokens=16)
    assert "Image url not in expected format" in err.value.response.json()["error"]["message"]
    assert mock.state()["counts"].get("api_anthropic", 0) == 0  # refused before any provider call
    assert _row(app, key, err.value.response.headers["x-doka-request-id"])["status"] == 400
    assert app.inflight(key["key_id"]) == 0


def test_a_parameter_the_provider_does_not_take(app, key, mock):
    """`seed` is OpenAI's; Anthropic has none. Asked of the Anthropic model alone: a 400 in doka's
    words (LiteLLM's says to set `litellm.drop_params`, which doka users cannot), no provider call.
    In a chain the next tier answers. With `drop_params: true` in its litellm_params, it answers."""
    client = app.openai(key)
    ask = dict(messages=[{"role": "user", "content": "hello"}], max_tokens=16, seed=7)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="mock-claude-direct", **ask)
    message = err.value.response.json()["error"]["message"]
    assert message.startswith("model 'mock-claude-direct' (anthropic) does not support parameters: seed;"), message
    assert "drop_params: true" in message and "litellm.drop_params" not in message
    assert mock.state()["counts"].get("api_anthropic", 0) == 0
    assert _row(app, key, err.value.response.headers["x-doka-request-id"])["status"] == 400
    raw = client.chat.completions.with_raw_response.create(model="claude-chain", **ask)
    assert raw.headers["x-doka-model"] == "mock-gpt-4" and raw.headers["x-doka-route-reason"].startswith("fallback:tier2")
    assert _last_body(mock, "gpt-4-turbo")["seed"] == 7  # the OpenAI tier takes it
    for stream in (False, True):
        raw = client.chat.completions.with_raw_response.create(model="mock-claude-lenient", stream=stream, **ask)
        assert raw.headers["x-doka-model"] == "mock-claude-lenient"
    assert mock.state()["counts"]["api_anthropic"] == 2 and "seed" not in _last_body(mock, CLAUDE)
    assert app.inflight(key["key_id"]) == 0


def test_hanging_anthropic_tier_times_out_and_falls_back(app, key, mock):
    """The Anthropic tier never answers: after its timeout the chain answers from mock-gpt-4 and
    the one ledger row is the fallback's; no reservation is left open."""
    mock.state(faults={CLAUDE: "timeout"})
    raw = app.openai(key).chat.completions.with_raw_response.create(
        model="claude-chain", messages=[{"role": "user", "content": "hi"}], max_tokens=16)
    assert raw.headers["x-doka-model"] == "mock-gpt-4" and raw.headers["x-doka-route-reason"] == "fallback:tier2"
    assert mock.state()["counts"]["fault_timeout"] == 1
    row = _row(app, key, raw.headers["x-doka-request-id"])
    assert (row["model"], row["status"]) == ("mock-gpt-4", 200)
    assert app.inflight(key["key_id"]) == 0
