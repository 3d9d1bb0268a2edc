"""The translators behind /v1/messages and /v1/responses, without a gateway (fast, pure functions).

The end-to-end behaviour with the real SDKs is in tests/test_gateway_apis.py; here the parts
the OpenAI-format mock cannot show: what exactly goes to the backend (images, tool results,
tool_choice, system blocks, input items) and the event order of the stream translators, fed
the chunk sequence an OpenAI-compatible provider sends.
"""

from __future__ import annotations

import json

import pytest

from app import anthropic_api as A
from app import responses_api as R
from app.errors import OpenAIError
from app.schemas import validate_body


def _events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            head, data = block.split("\n", 1)
            out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_messages_request_to_chat_body():
    req = A.validate(A.MessagesRequest, {
        "model": "m", "max_tokens": 20, "stop_sequences": ["END"], "temperature": 0.3, "top_k": 5,
        "system": [{"type": "text", "text": "be terse", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "look", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u1"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "see"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
                                         {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "text", "text": "looking"},
                                              {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                          "content": [{"type": "text", "text": "boom"}]},
                                         {"type": "text", "text": "and now?"}]},
        ]})
    body = A.to_chat(req)
    assert body["messages"] == [
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": [{"type": "text", "text": "see"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": "looking",
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "look", "arguments": '{"q": 1}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
        {"role": "user", "content": "and now?"},
    ]
    assert body["tools"] == [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"},
                                                               "description": "d"}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "look"}}
    assert (body["parallel_tool_calls"], body["stop"], body["temperature"], body["user"]) == (False, ["END"], 0.3, "u1")
    assert "top_k" not in body and "thinking" not in body and "stream" not in body
    stream = A.to_chat(A.validate(A.MessagesRequest, {"model": "m", "max_tokens": 1, "stream": True,
                                                      "messages": [{"role": "user", "content": "x"}]}))
    assert stream["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("body,param", [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 1, "messages": []}, "messages"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "max_tokens": 1, "api_base": "http://x", "messages": [{"role": "user", "content": "x"}]}, "api_base"),
    ({"model": "m", "max_tokens": 1, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]}, "temperature"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages.0.content.0"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages.0.content.0.text.text"),
])
def test_messages_request_errors_name_the_field(body, param):
    with pytest.raises(OpenAIError) as e:
        A.to_chat(A.validate(A.MessagesRequest, body))
    assert e.value.status == 400
    if param:
        assert e.value.param == param
    assert A.error_body(400, e.value.message)["error"]["type"] == "invalid_request_error"


def test_messages_answer_and_stream_events():
    answer = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "let me look",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"q": 2}'}}]}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    msg = A.from_chat(answer, "m")
    assert [b["type"] for b in msg["content"]] == ["text", "tool_use"] and msg["content"][1]["input"] == {"q": 2}
    assert (msg["stop_reason"], msg["usage"]) == ("tool_use", {"input_tokens": 7, "output_tokens": 3})

    d = A.MessagesDialect("m", 5)
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi "}}]},
              {"choices": [{"index": 0, "delta": {"content": "there"}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "look", "arguments": ""}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q"'}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
              {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}]
    events = _events(b"".join(d.chunk(c) for c in chunks) + d.end())
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert events[5][1]["content_block"] == {"type": "tool_use", "name": "look", "input": {}, "id": "c1"}
    assert "".join(e["delta"]["partial_json"] for n, e in events if n == "content_block_delta" and e["index"] == 1) == '{"q": 2}'
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"] == {"input_tokens": 7, "output_tokens": 3}
    assert _events(A.MessagesDialect("m").end())[0][0] == "message_start"  # an empty stream is still well-formed


def test_responses_request_items_to_chat():
    req = validate_body(R.ResponsesRequest, {
        "model": "m", "instructions": "sys", "max_output_tokens": 30, "stream": True,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}], "tool_choice": {"type": "function", "name": "f"},
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                                  {"type": "input_image", "image_url": "https://i/p.png"}]},
                  {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "42"},
                  {"role": "assistant", "content": [{"type": "output_text", "text": "it is 42"}]}]})
    body = R.to_chat(req)
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "https://i/p.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "it is 42"},
    ]
    assert body["max_tokens"] == 30 and body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["stream_options"] == {"include_usage": True}
    with pytest.raises(OpenAIError) as e:
        R.to_chat(validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "previous_response_id": "resp_1"}))
    assert e.value.param == "previous_response_id"
    with pytest.raises(OpenAIError) as e:  # a client-run built-in has no chat form: refused, named
        validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "tools": [{"type": "local_shell"}]}, deepest=True)
    assert e.value.param.startswith("tools.0") and "local_shell" in e.value.message
    with pytest.raises(OpenAIError) as e:
        validate_body(R.ResponsesRequest, {"model": "m", "input": [{"type": "web_search_call"}]}, deepest=True)
    assert e.value.param == "input.0.type"


def test_responses_hosted_namespace_and_custom_tools_become_chat_functions():
    """What Codex CLI sends: function tools, a namespace of them, web_search (hosted: left out,
    named in a header), replayed reasoning (skipped), developer messages; a custom tool too."""
    req = validate_body(R.ResponsesRequest, {
        "model": "m", "tool_choice": "auto", "include": ["reasoning.encrypted_content"], "store": False,
        "reasoning": {"summary": "auto"},
        "tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}, "strict": False},
                  {"type": "namespace", "name": "agents", "description": "sub-agents", "tools": [
                      {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}]},
                  {"type": "custom", "name": "apply_patch", "description": "edit files",
                   "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
                  {"type": "web_search", "external_web_access": False}],
        "input": [{"type": "message", "id": "msg_1", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
                  {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
                  {"type": "function_call", "call_id": "c1", "name": "close_agent", "namespace": "agents", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "closed"},
                  {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
                  {"type": "custom_tool_call_output", "call_id": "c2", "output": "ok"}]}, deepest=True)
    body = R.to_chat(req)
    assert "reasoning_effort" not in body  # Codex's `reasoning: {summary: auto}` sets no effort
    assert [t["function"]["name"] for t in body["tools"]] == ["exec_command", "agents__close_agent", "apply_patch"]
    assert body["tools"][2]["function"]["parameters"]["required"] == ["input"] and body["tool_choice"] == "auto"
    assert body["messages"] == [
        {"role": "developer", "content": "be brief"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "agents__close_agent", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "closed"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "apply_patch", "arguments": '{"input": "*** Begin Patch"}'}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"}]
    b = R.ResponseBuilder(req)
    assert b.extra_headers == {"x-doka-tools-dropped": "web_search"}
    done = b.answer({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"tool_calls": [
        {"id": "k1", "type": "function", "function": {"name": "agents__close_agent", "arguments": '{"id": 1}'}},
        {"id": "k2", "type": "function", "function": {"name": "apply_patch", "arguments": '{"input": "diff"}'}}]}}]})
    assert [(o["type"], o["name"], o.get("namespace")) for o in done["output"]] == [
        ("function_call", "close_agent", "agents"), ("custom_tool_call", "apply_patch", None)]
    assert done["output"][1]["input"] == "diff" and done["output"][0]["arguments"] == '{"id": 1}'
    assert done["tools"][3] == {"type": "web_search", "external_web_access": False}  # echoed as asked
    effort = R.to_chat(validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "reasoning": {"effort": "high"}}))
    assert effort["reasoning_effort"] == "high"
    with pytest.raises(OpenAIError) as e:
        validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "reasoning": {"effort": "huge"}}, deepest=True)
    assert e.value.param == "reasoning.effort"
    only_hosted = R.to_chat(validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "tool_choice": "auto",
                                                               "tools": [{"type": "web_search"}]}))
    assert "tools" not in only_hosted and "tool_choice" not in only_hosted
    with pytest.raises(OpenAIError) as e:  # two tools, one chat name
        R.to_chat(validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "tools": [
            {"type": "function", "name": "a__b"}, {"type": "namespace", "name": "a", "tools": [{"type": "function", "name": "b"}]}]}))
    assert "a__b" in e.value.message


def test_responses_stream_of_namespace_and_custom_tool_calls():
    req = validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "stream": True, "tools": [
        {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "f"}]}, {"type": "custom", "name": "patch"}]})
    b = R.ResponseBuilder(req)
    raw = b"".join(b.chunk(c) for c in [
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "k1", "function": {"name": "ns__f", "arguments": '{"a"'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ': 1}'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "k2", "function": {"name": "patch", "arguments": '{"inp'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": 'ut": "line\\n"}'}}]},
                      "finish_reason": "tool_calls"}]}]) + b.end()
    events = _events(raw)
    names = [n for n, _ in events]
    assert names.count("response.output_item.added") == 2 and names.count("response.output_item.done") == 2
    added = [e["item"] for n, e in events if n == "response.output_item.added"]
    assert added[0]["type"] == "function_call" and added[0]["namespace"] == "ns" and added[0]["name"] == "f"
    assert added[1]["type"] == "custom_tool_call" and added[1]["input"] == ""
    assert "".join(e["delta"] for n, e in events if n == "response.function_call_arguments.delta") == '{"a": 1}'
    custom_done = next(e for n, e in events if n == "response.custom_tool_call_input.done")
    assert custom_done["input"] == "line\n"  # the JSON string, decoded
    final = events[-1][1]["response"]["output"]
    assert final[0]["arguments"] == '{"a": 1}' and final[1]["input"] == "line\n" and final[1]["status"] == "completed"


def test_responses_stream_events_in_order_with_usage():
    b = R.ResponseBuilder(validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "stream": True}))
    raw = b"".join(b.chunk(c) for c in [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}]) + b.end()
    events = _events(raw)
    assert [n for n, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    done = events[-1][1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == "Hello"
    assert done["usage"]["input_tokens"] == 4 and done["usage"]["output_tokens"] == 2 and done["usage"]["total_tokens"] == 6
    cut = R.ResponseBuilder(validate_body(R.ResponsesRequest, {"model": "m", "input": "x", "max_output_tokens": 1}))
    plain = cut.answer({"choices": [{"index": 0, "finish_reason": "length", "message": {"content": "H"}}], "usage": {}})
    assert plain["status"] == "incomplete" and plain["incomplete_details"] == {"reason": "max_output_tokens"}
