"""Capability declaration and filtering (app/capabilities.py), vLLM tool calling from the config,
and the Messages API bodies Claude Code sends (app/anthropic_api.py): Ray-free, fast."""

from __future__ import annotations

import pytest

from app import anthropic_api as A
from app import capabilities as C
from app.config import load_config, parse_config
from app.errors import OpenAIError
from tests.conftest import DEFAULT_CONFIG


def _entry(**info):
    raw = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/gpt-4-turbo"}, "model_info": info}]}
    return parse_config(raw).model("m")


def test_litellm_model_info_fills_unset_capabilities_and_config_wins():
    caps = C.resolve(_entry())  # LiteLLM's offline cost map knows gpt-4-turbo
    assert (caps.tools, caps.vision, caps.context_window, caps.max_output_tokens) == (True, True, 128000, 4096)
    caps = C.resolve(_entry(supports_vision=False, context_window=1000))
    assert (caps.tools, caps.vision, caps.context_window) == (True, False, 1000)
    unknown = C.resolve(_entry(), lookup=lambda model: None)
    assert unknown == C.Capabilities()  # unknown: nothing filters it


def test_vllm_capabilities_follow_the_engine_settings():
    cfg = load_config(DEFAULT_CONFIG)
    tiny = cfg.model("local-tiny")
    caps = C.resolve(tiny)
    assert (caps.tools, caps.context_window) == (False, 512)  # no tool parser: no tool requests
    tiny.vllm.tool_call_parser = "hermes"
    assert C.resolve(tiny).tools is True

    from deployments.vllm import engine_kwargs_for

    kwargs = engine_kwargs_for(tiny.vllm)
    assert kwargs["enable_auto_tool_choice"] is True and kwargs["tool_call_parser"] == "hermes"
    assert kwargs["max_model_len"] == 512


def test_needs_and_split_name_what_is_missing():
    caps = {"small": {"tools": False, "vision": False, "response_schema": False, "context_window": 50},
            "big": {"tools": True}, "unknown": {}}
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}}
    needs = C.needs_of(body)
    assert needs.tools and needs.vision and needs.response_schema
    kept, dropped = C.split(["small", "big", "unknown"], caps, needs)
    assert kept == ["big", "unknown"] and dropped == {"small": ["tools", "vision", "response_format"]}
    assert C.describe(dropped) == "small:tools+vision+response_format"
    long = C.needs_of({"messages": [{"role": "user", "content": "word " * 100}]})
    assert C.split(["small", "big"], caps, long) == (["big"], {"small": ["context_window"]})
    assert not C.needs_of({"messages": [{"role": "user", "content": "x"}], "tools": [{}], "tool_choice": "none"}).tools


def test_per_tier_body_caps_max_tokens_and_drops_reasoning_for_non_reasoners():
    body = {"model": "m", "max_tokens": 32000, "reasoning_effort": "high", "messages": []}
    out = C.for_model(body, {"max_output_tokens": 4096, "reasoning": None})
    assert out["max_tokens"] == 4096 and "reasoning_effort" not in out and body["max_tokens"] == 32000
    assert C.for_model(body, {"reasoning": True}) is body


@pytest.mark.parametrize("message, refusal", [
    ('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set', True),
    ("This model's maximum context length is 512 tokens. However, you requested 900 tokens", True),
    ("model does not support image input", True),
    ("Invalid value for 'temperature'", False),
])
def test_capability_refusals_are_told_apart(message, refusal):
    assert C.is_capability_refusal(400, message) is refusal


# ------------------------------------------------------------------ Messages API bodies
CLAUDE_CODE_BODY = {
    "model": "m", "max_tokens": 32000, "stream": True,
    "system": [{"type": "text", "text": "billing"},
               {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"},
                                     {"type": "text", "text": "say hi"}]},
        {"role": "system", "content": [{"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}]}],
    "tools": [{"name": "Read", "description": "read", "input_schema": {"type": "object", "properties": {}}},
              {"name": "Deferred", "description": "d", "input_schema": {"type": "object"}, "defer_loading": True}],
    "metadata": {"user_id": '{"device_id":"d","session_id":"s"}'},
    "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
}


def test_claude_code_body_translates():
    body = A.to_chat(A.validate(A.MessagesRequest, CLAUDE_CODE_BODY))
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == "billing\nYou are an agent.\n\n# Environment"
    assert [t["function"]["name"] for t in body["tools"]] == ["Read", "Deferred"]
    assert body["reasoning_effort"] == "high" and body["stream"] is True and "context_management" not in body


@pytest.mark.parametrize("thinking, config, effort", [
    ({"type": "disabled"}, None, None),
    ({"type": "enabled", "budget_tokens": 2048}, None, "low"),
    ({"type": "enabled", "budget_tokens": 20000}, None, "high"),
    ({"type": "adaptive"}, {"effort": "max"}, "high"),
    ({"type": "adaptive"}, None, "medium"),
])
def test_thinking_maps_to_reasoning_effort(thinking, config, effort):
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}], "thinking": thinking,
            **({"output_config": config} if config else {})}
    assert A.to_chat(A.validate(A.MessagesRequest, body)).get("reasoning_effort") == effort


def test_documents_search_results_and_structured_output():
    body = A.to_chat(A.validate(A.MessagesRequest, {
        "model": "m", "max_tokens": 8, "stop_sequences": ["END"],
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc text"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
            {"type": "search_result", "source": "s", "title": "t", "content": [{"type": "text", "text": "r"}]},
            {"type": "text", "text": "q"}]}]}))
    parts = body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "doc text"} and parts[1]["type"] == "file"
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"} and body["stop"] == ["END"]


@pytest.mark.parametrize("extra, words", [
    ({"api_base": "http://x"}, "api_base: Extra inputs are not permitted"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tools"),
    ({"tools": [{"name": "f"}]}, "tools.0.input_schema"),
    ({"messages": [{"role": "user", "content": [{"type": "server_tool_use", "id": "x"}]}]}, "server tools"),
])
def test_refused_bodies_say_why(extra, words):
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(OpenAIError) as e:
        A.to_chat(A.validate(A.MessagesRequest, body))
    assert e.value.status == 400 and words in e.value.message
