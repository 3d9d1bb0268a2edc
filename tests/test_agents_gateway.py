"""Agents end to end through a keys-on gateway: the real Claude Code CLI, the unmodified
Anthropic SDK with a Claude-Code-shaped body, and capability-aware `auto` on chat, /v1/messages
and /v1/responses.

Two `auto` candidates: mock-small (declares no tools, no images, no JSON output and a 300-token
context, and has 3x the round-robin weight, so it takes most plain requests) and mock-big (able
to do all of them). A request that needs what mock-small lacks must be answered by mock-big,
with the route reason naming mock-small and why.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pydantic
import pytest

from tests.claude_code_support import claude_binary, offline_env, run_claude
from tests.codex_cli_support import codex_binary, items, run_codex
from tests.faults_support import deploy_app

SMALL = {"tier": "cheap", "timeout": 10, "weight": 3, "input_cost_per_token": 1e-7, "output_cost_per_token": 1e-7,
         "supports_tools": False, "supports_vision": False, "supports_response_schema": False, "context_window": 300}
BIG = {"tier": "premium", "timeout": 10, "weight": 1, "input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6,
       "supports_tools": True, "supports_vision": True, "supports_response_schema": True, "context_window": 200_000}
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
TOOL_OAI = {"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
TOOL_ANT = {"name": "get_weather", "description": "weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def _tweak(raw: dict) -> None:
    for m in raw["model_list"]:
        m["model_info"]["parallel"] = True  # only the two below are auto candidates
    base = next(m for m in raw["model_list"] if m["model_name"] == "mock-gpt-4")["litellm_params"]
    raw["model_list"] += [
        {"model_name": "mock-small", "litellm_params": {**base, "model": "openai/small-model"}, "model_info": SMALL},
        {"model_name": "mock-big", "litellm_params": {**base, "model": "openai/big-model"}, "model_info": BIG}]
    raw["model_list"].append({"model_name": "mock-refuser", "litellm_params": {**base, "model": "openai/refuser"},
                              "model_info": {"tier": "cheap", "timeout": 10, "parallel": True}})
    raw["model_list"].append({"model_name": "mock-thinker", "litellm_params": {**base, "model": "openai/thinker"},
                              "model_info": {"tier": "premium", "timeout": 10, "parallel": True, "supports_reasoning": True}})
    raw["fallbacks"] = {**raw.get("fallbacks", {}), "refuser-chain": ["mock-refuser", "mock-big"]}
    raw["cascades"] = {**raw.get("cascades", {}),
                       "small-first": {"weak": "mock-small", "verifier": "mock-gpt-3.5", "strong": "mock-big"}}


@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, tmp_path_factory):
    from ray import serve

    app = deploy_app("doka-agents", "/agents", mock_upstream.port, str(tmp_path_factory.mktemp("agents")),
                     tweak=_tweak)
    yield app
    serve.delete(app.name)


@pytest.fixture()
def key(gw, mock):
    mock.state(tool_script={})
    yield gw.new_key(tokens_per_day=100_000_000)
    mock.state(tool_script={})


def oai(gw, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key["key"], max_retries=0)


def claude(gw, key) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key["key"], max_retries=0)


# ------------------------------------------------------------------ capability-aware auto
def test_models_list_shows_capabilities(gw, key):
    models = {m.id: m for m in oai(gw, key).models.list().data}
    caps = models["mock-small"].model_extra["doka"]["capabilities"]
    assert caps["tools"] is False and caps["context_window"] == 300
    # LiteLLM's model info fills what the config leaves unset (openai/gpt-4-turbo: vision, 128k)
    gpt4 = models["mock-gpt-4"].model_extra["doka"]["capabilities"]
    assert gpt4["vision"] is True and gpt4["context_window"] == 128000


def test_auto_without_needs_uses_the_small_model(gw, key):
    """The signal the next tests count: plain requests do reach mock-small."""
    answered = [oai(gw, key).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": f"hi {i}"}]).headers["x-doka-model"] for i in range(4)]
    assert "mock-small" in answered
    assert all("filtered" not in r for r in answered)


NEEDS = {
    "tools": ({"tools": [TOOL_OAI]}, "tools"),
    "image": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                                         {"type": "image_url", "image_url": {"url": IMAGE}}]}]},
              "vision"),
    "json_schema": ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}},
                    "response_format"),
    "long": ({"messages": [{"role": "user", "content": "word " * 2000}]}, "context_window"),
}


@pytest.mark.parametrize("need", list(NEEDS))
def test_auto_chat_only_capable_candidates(gw, key, need):
    extra, why = NEEDS[need]
    body = {"messages": [{"role": "user", "content": "hello"}], **extra}
    for _ in range(4):  # round robin would give mock-small 3 of 4
        raw = oai(gw, key).chat.completions.with_raw_response.create(model="auto", **body)
        assert raw.headers["x-doka-model"] == "mock-big"
        assert f"filtered=mock-small:{why}" in raw.headers["x-doka-route-reason"]
        assert "not capable: mock-small" in raw.headers["x-doka-router"]


@pytest.mark.parametrize("need", ["tools", "image", "json_schema", "long"])
def test_auto_messages_only_capable_candidates(gw, key, need):
    content: object = "hello"
    extra: dict = {}
    if need == "tools":
        extra = {"tools": [TOOL_ANT]}
    elif need == "image":
        content = [{"type": "text", "text": "what is this"},
                   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE.split(",")[1]}}]
    elif need == "json_schema":
        extra = {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
    else:
        content = "word " * 2000
    for _ in range(3):
        raw = claude(gw, key).messages.with_raw_response.create(
            model="auto", max_tokens=64, messages=[{"role": "user", "content": content}], **extra)
        assert raw.headers["x-doka-model"] == "mock-big"
        assert "filtered=mock-small:" in raw.headers["x-doka-route-reason"]
        assert raw.parse().type == "message"


@pytest.mark.parametrize("need", ["tools", "image", "json_schema", "long"])
def test_auto_responses_only_capable_candidates(gw, key, need):
    kw: dict = {"input": "hello"}
    if need == "tools":
        kw["tools"] = [{"type": "function", "name": "get_weather", "parameters": TOOL_ANT["input_schema"]}]
    elif need == "image":
        kw["input"] = [{"role": "user", "content": [{"type": "input_text", "text": "what is this"},
                                                    {"type": "input_image", "image_url": IMAGE}]}]
    elif need == "json_schema":
        kw["text"] = {"format": {"type": "json_schema", "name": "a", "schema": SCHEMA}}
    else:
        kw["input"] = "word " * 2000
    for _ in range(3):
        raw = oai(gw, key).responses.with_raw_response.create(model="auto", **kw)
        assert raw.headers["x-doka-model"] == "mock-big"
        assert "filtered=mock-small:" in raw.headers["x-doka-route-reason"]


def test_responses_hosted_tools_left_out_and_reasoning_effort_only_for_reasoners(gw, key, mock):
    for stream in (False, True):
        raw = oai(gw, key).responses.with_raw_response.create(
            model="mock-big", input="hello", stream=stream,
            tools=[{"type": "web_search"}, {"type": "function", "name": "get_weather", "parameters": TOOL_ANT["input_schema"]}])
        assert raw.headers["x-doka-tools-dropped"] == "web_search"
        assert [t["function"]["name"] for t in mock.last("big-model")["tools"]] == ["get_weather"]
    plain = oai(gw, key).responses.with_raw_response.create(model="mock-big", input="hello", reasoning={"effort": "high"})
    assert "x-doka-tools-dropped" not in plain.headers
    assert "reasoning_effort" not in mock.last("big-model")  # mock-big is not known to reason
    oai(gw, key).responses.create(model="mock-thinker", input="hello", reasoning={"effort": "high"})
    assert mock.last("thinker")["reasoning_effort"] == "high"  # one that is gets the effort


class _Place(pydantic.BaseModel):
    city: str
    population: int


class _Trip(pydantic.BaseModel):  # nested: pydantic's schema carries $defs and $ref
    stops: list[_Place]
    home: _Place
    by_train: bool


def test_structured_output_through_auto_with_the_sdks_parse_helpers(gw, key, mock):
    """The SDK's own helpers (what LangChain's default `with_structured_output` sends): the JSON
    schema reaches the provider strict and whole, only a capable model gets it, and the answer
    parses into the caller's type, plain, streamed and through the Responses API."""
    client = oai(gw, key)
    raw = client.chat.completions.with_raw_response.parse(
        model="auto", messages=[{"role": "user", "content": "plan a trip"}], response_format=_Trip)
    assert raw.headers["x-doka-model"] == "mock-big"
    assert "filtered=mock-small:response_format" in raw.headers["x-doka-route-reason"]
    trip = raw.parse().choices[0].message.parsed
    assert isinstance(trip, _Trip) and trip.home.city and trip.stops
    sent = mock.last("big-model")["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["$defs"]["_Place"]["required"] == ["city", "population"]
    with client.chat.completions.stream(model="auto", messages=[{"role": "user", "content": "plan a trip"}],
                                        response_format=_Trip) as stream:
        streamed = stream.get_final_completion().choices[0].message.parsed
    assert streamed == trip
    resp = client.responses.parse(model="auto", input="plan a trip", text_format=_Trip)
    assert resp.output_parsed == trip


def test_no_capable_model_is_a_400_naming_the_capability(gw, key):
    with pytest.raises(openai.BadRequestError) as e:
        oai(gw, key).chat.completions.create(model="mock-small", messages=[{"role": "user", "content": "x"}],
                                             tools=[TOOL_OAI])
    assert e.value.code == "model_not_capable" and "tools" in e.value.message
    with pytest.raises(anthropic.BadRequestError) as ea:  # Anthropic's shape on /v1/messages
        claude(gw, key).messages.create(model="mock-small", max_tokens=8, tools=[TOOL_ANT],
                                        messages=[{"role": "user", "content": "x"}])
    assert ea.value.body["error"]["type"] == "invalid_request_error" and "tools" in ea.value.body["error"]["message"]
    # refused after the key was checked: each has its ledger row (400, nothing charged), nothing held
    deadline = time.time() + 10
    while time.time() < deadline and not (len([r for r in gw.ledger(key["key_id"]) if r["status"] == 400]) == 2
                                          and gw.inflight(key["key_id"]) == 0):
        time.sleep(0.2)
    rows = gw.ledger(key["key_id"])
    assert [r["status"] for r in rows] == [400, 400] and gw.inflight(key["key_id"]) == 0, rows


def test_cascade_skips_an_incapable_weak_model(gw, key):
    raw = oai(gw, key).chat.completions.with_raw_response.create(
        model="small-first", messages=[{"role": "user", "content": "hello"}], tools=[TOOL_OAI])
    assert raw.headers["x-doka-model"] == "mock-big"
    assert raw.headers["x-doka-route-reason"] == "cascade:incapable=mock-small:tools"


VLLM_REFUSAL = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


def test_a_tier_refusing_for_a_capability_is_skipped(gw, key, mock):
    """mock-refuser's capabilities are unknown (so not filtered) and it answers tools like vLLM
    without a tool parser: the chain goes on to mock-big instead of returning that 400."""
    mock.state(tool_script={"refuser": {"refuse_tools": VLLM_REFUSAL}})
    raw = oai(gw, key).chat.completions.with_raw_response.create(
        model="refuser-chain", messages=[{"role": "user", "content": "hello"}], tools=[TOOL_OAI])
    assert raw.headers["x-doka-model"] == "mock-big"
    assert raw.headers["x-doka-tiers-tried"] == "mock-refuser,mock-big"
    # the signal is real: the upstream itself answers that 400
    direct = httpx.post(f"{mock.url}/v1/chat/completions", timeout=10, json={
        "model": "refuser", "messages": [{"role": "user", "content": "x"}], "tools": [TOOL_OAI]})
    assert direct.status_code == 400 and "enable-auto-tool-choice" in direct.json()["error"]["message"]
    # a refusal that is not about capabilities still comes back from the first tier
    mock.state(tool_script={"refuser": {"refuse_tools": "Invalid value for 'tools'"}})
    with pytest.raises(openai.BadRequestError):
        oai(gw, key).chat.completions.create(model="refuser-chain", messages=[{"role": "user", "content": "x"}],
                                             tools=[TOOL_OAI])


# ------------------------------------------------------------------ Anthropic SDK, Claude Code's body
CC_SYSTEM = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332;"},
             {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}]


def _cc_messages() -> list:
    return [{"role": "user", "content": [{"type": "text", "text": "<system-reminder>be brief</system-reminder>"},
                                         {"type": "text", "text": "say hello", "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": [{"type": "text", "text": "# Environment\nlinux",
                                            "cache_control": {"type": "ephemeral"}}]}]


def test_sdk_claude_code_shaped_body_message_and_stream(gw, key, mock):
    mock.state(tool_script={"big-model": {"answer": "hello from doka"}})
    c = claude(gw, key)
    common = dict(model="mock-big", max_tokens=32000, system=CC_SYSTEM, messages=_cc_messages(),
                  tools=[TOOL_ANT, {**TOOL_ANT, "name": "Deferred", "defer_loading": True}],
                  thinking={"type": "adaptive"}, output_config={"effort": "high"},
                  metadata={"user_id": json.dumps({"device_id": "d", "session_id": "s"})})
    msg = c.messages.create(**common, timeout=60)  # (the SDK wants a stream for 32k tokens otherwise)
    assert msg.content[0].type == "text" and msg.content[0].text == "hello from doka"
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens > 0
    sent = httpx.get(f"{mock.url}/_mock/last/big-model", timeout=5).json()
    # one leading system message (the system field, then the system turn), thinking -> reasoning_effort
    # dropped (mock-big is not known to reason), max_tokens as asked (no output limit declared)
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][0]["content"].endswith("# Environment\nlinux")
    assert "reasoning_effort" not in sent and sent["max_tokens"] == 32000 and len(sent["tools"]) == 2
    with c.beta.messages.stream(**common, context_management={"edits": [{"type": "clear_thinking_20251015",
                                                                         "keep": "all"}]},
                                betas=["context-management-2025-06-27"]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "hello from doka" and final.stop_reason == "end_turn"


def test_sdk_tool_use_stream_and_is_error_round_trip(gw, key, mock):
    mock.state(tool_script={"big-model": {"name": "get_weather", "arguments": {"city": "Oslo"},
                                          "answer": "Saw:"}})
    c = claude(gw, key)
    with c.messages.stream(model="mock-big", max_tokens=256, tools=[TOOL_ANT],
                           messages=[{"role": "user", "content": "weather in Oslo?"}]) as stream:
        first = stream.get_final_message()
    use = next(b for b in first.content if b.type == "tool_use")
    assert (use.name, use.input, first.stop_reason) == ("get_weather", {"city": "Oslo"}, "tool_use")
    second = c.messages.create(model="mock-big", max_tokens=256, tools=[TOOL_ANT], messages=[
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "x"},
                                          {"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "is_error": True,
                                      "content": [{"type": "text", "text": "station offline"}]}]}])
    assert second.content[0].text == "Saw: Error: station offline"


def test_messages_refusals_in_anthropic_shape(gw, key):
    c = claude(gw, key)
    for extra, words in (({"extra_body": {"api_base": "http://evil.example"}}, "api_base"),
                         ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
                         ({"extra_body": {"mcp_servers": [{"type": "url", "url": "http://x", "name": "x"}]}}, "mcp_servers")):
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.create(model="mock-big", max_tokens=8, messages=[{"role": "user", "content": "x"}], **extra)
        assert words in e.value.body["error"]["message"], e.value.body


def test_count_tokens_takes_the_same_body(gw, key):
    n = claude(gw, key).messages.count_tokens(
        model="mock-big", system=CC_SYSTEM, messages=_cc_messages(), tools=[TOOL_ANT],
        thinking={"type": "adaptive"}, output_config={"effort": "high"})
    assert n.input_tokens > 5


# ------------------------------------------------------------------ the real Claude Code CLI
def _installed(found: tuple, what: str):
    """The CLI's binary from an npm_binary lookup, or skip saying why it is not there."""
    binary, why = found
    if binary is None:
        pytest.skip(f"{what} not available: {why}")
    return binary


@pytest.fixture(scope="module")
def claude_cli():
    return _installed(claude_binary(), "Claude Code")


@pytest.mark.parametrize("model", ["mock-big", "auto"])
def test_claude_code_one_shot(gw, key, mock, claude_cli, tmp_path, model):
    mock.state(tool_script={"big-model": {"answer": "Hello from doka via Claude Code"}})
    (tmp_path / "home").mkdir()
    env = offline_env(tmp_path / "home", gw.url, key["key"], model)
    proc = run_claude(claude_cli, tmp_path, env, "say hello", model)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Hello from doka via Claude Code" in proc.stdout
    rows = [r for r in gw.ledger(key["key_id"]) if r.get("status") == 200]
    assert rows and all(r["model"] == "mock-big" for r in rows), rows
    if model == "auto":  # Claude Code always offers tools: mock-small (no tools) was left out
        assert all("filtered=mock-small:tools" in (r.get("route_reason") or "") for r in rows), rows


@pytest.mark.parametrize("model", ["mock-big", "auto"])
def test_claude_code_agent_loop_reads_a_file(gw, key, mock, claude_cli, tmp_path, model):
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret.txt").write_text("the secret number is 4817\n")
    mock.state(tool_script={"big-model": {"name": "Read", "arguments": {"file_path": str(work / "secret.txt")},
                                          "answer": "The file says:"}})
    (tmp_path / "home").mkdir()
    env = offline_env(tmp_path / "home", gw.url, key["key"], model)
    proc = run_claude(claude_cli, work, env, "What is in secret.txt?", model, "--allowedTools", "Read")
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "The file says:" in proc.stdout and "4817" in proc.stdout, proc.stdout[-2000:]
    rows = [r for r in gw.ledger(key["key_id"]) if r.get("status") == 200]
    assert len(rows) >= 2 and all(r["model"] == "mock-big" for r in rows), rows


# ------------------------------------------------------------------ the real Codex CLI (Responses API)
@pytest.fixture(scope="module")
def codex_cli():
    return _installed(codex_binary(), "Codex CLI")


@pytest.mark.parametrize("model", ["mock-big", "auto"])
def test_codex_cli_runs_a_command_through_the_responses_api(gw, key, mock, codex_cli, tmp_path, model):
    """Codex's turn offers function tools, a namespace of them and web_search (hosted), replays
    its history as input items and streams: its first request used to be refused (`tools.4.type`).
    Now its model calls `exec_command`, Codex runs it, and the next turn sees the output."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret.txt").write_text("the secret number is 4817\n")
    mock.state(tool_script={"big-model": {"name": "exec_command", "arguments": {"cmd": "cat secret.txt"},
                                          "answer": "The command printed:"}})
    proc, events = run_codex(codex_cli, tmp_path / "home", work, gw.url + "/v1", key["key"], model,
                             "What is in secret.txt?")
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    commands = items(events, "command_execution")
    assert [("cat secret.txt" in c["command"], c["exit_code"]) for c in commands] == [(True, 0)], commands
    answer = items(events, "agent_message")[-1]["text"]
    assert answer.startswith("The command printed:") and "4817" in answer, answer
    rows = [r for r in gw.ledger(key["key_id"]) if r.get("status") == 200]
    assert len(rows) == 2 and all(r["model"] == "mock-big" for r in rows), rows  # one turn, two model calls
    if model == "auto":  # Codex always offers tools: mock-small (no tools) was left out
        assert all("filtered=mock-small:tools" in (r.get("route_reason") or "") for r in rows), rows
    sent = mock.last("big-model")
    names = {t["function"]["name"] for t in sent["tools"]}
    assert "exec_command" in names and any("__" in n for n in names)  # a namespace's tools, flattened
    assert sent["messages"][-1]["role"] == "tool" and "4817" in sent["messages"][-1]["content"]
