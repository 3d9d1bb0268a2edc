"""A mock of Anthropic's Messages API (`POST /v1/messages`) in Anthropic's own wire format.

Plain JSON and SSE (`message_start`, `content_block_start`, `content_block_delta`,
`content_block_stop`, `message_delta`, `message_stop`), `tool_use` blocks when tools are given
and the prompt asks for one or `tool_choice` forces one (an answer naming the tool result once it
comes back), an instance of the schema for structured outputs (`output_format`), usage in
input/output tokens, and errors in Anthropic's shape (`{"type": "error", "error": {...}}`,
including 529 `overloaded_error`). Latency and faults come from load/mock_core.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from load.mock_core import HTTP_FAULTS, MockState, answer_words, dumps, sample_args, split_text, wants_tool

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}


def error(status: int, message: str) -> JSONResponse:
    """An error exactly as Anthropic sends it (`api_error` for any other 5xx)."""
    return JSONResponse({"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                                   "message": message}}, status)


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _text_of(block: dict[str, Any]) -> str:
    if block.get("type") == "text":
        return str(block.get("text", ""))
    if block.get("type") == "tool_result":
        return " ".join(_text_of(b) for b in _blocks(block.get("content")))
    return ""


def _prompt(body: dict[str, Any]) -> str:
    system = body.get("system")
    parts = [" ".join(_text_of(b) for b in _blocks(system))] if system else []
    for m in body.get("messages") or []:
        parts.extend(_text_of(b) for b in _blocks(m.get("content")))
    return " ".join(p for p in parts if p)


def _content(model: str, body: dict[str, Any], chunks: int) -> tuple[list[dict[str, Any]], str]:
    """The answer's content blocks and stop reason."""
    messages = body.get("messages") or []
    last = _blocks(messages[-1].get("content")) if messages else []
    results = [b for b in last if b.get("type") == "tool_result"]
    if results:
        said = " ".join(_text_of(b) for b in results)
        return [{"type": "text", "text": f"mock answer from {model}: the tool said {said}"}], "end_turn"
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    forced = choice.get("type") in ("any", "tool")
    asked = " ".join(_text_of(b) for b in last)
    if tools and choice.get("type") != "none" and wants_tool(asked, forced):
        tool = next((t for t in tools if t.get("name") == choice.get("name")), tools[0])
        return [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": tool["name"],
                 "input": sample_args(tool.get("input_schema"))}], "tool_use"
    # structured outputs (newer models): an instance of the schema as the text
    fmt = body.get("output_format") or (body.get("output_config") or {}).get("format") or {}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return [{"type": "text", "text": json.dumps(sample_args(fmt.get("schema")))}], "end_turn"
    return [{"type": "text", "text": "".join(answer_words(model, _prompt(body), chunks))}], "end_turn"


def _usage(prompt: str, content: list[dict[str, Any]]) -> dict[str, int]:
    out = sum(len(b.get("text", "").split()) or len(json.dumps(b.get("input", {})).split()) for b in content)
    return {"input_tokens": max(1, len(prompt.split())), "output_tokens": max(1, out)}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def stream_events(message: dict[str, Any], chunks: int) -> list[bytes]:
    """A finished message as the event sequence Anthropic streams."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}
    events = [_sse("message_start", {"type": "message_start", "message": start}), _sse("ping", {"type": "ping"})]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(_sse("content_block_start", {"type": "content_block_start", "index": i,
                                                        "content_block": {"type": "text", "text": ""}}))
            deltas = [{"type": "text_delta", "text": t} for t in split_text(block["text"], chunks)]
        else:
            events.append(_sse("content_block_start", {"type": "content_block_start", "index": i,
                                                        "content_block": {**block, "input": {}}}))
            raw = json.dumps(block["input"])
            half = len(raw) // 2
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in (raw[:half], raw[half:]) if p]
        events.extend(_sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})
                      for d in deltas)
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(_sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                         "usage": {"output_tokens": usage["output_tokens"]}}))
    events.append(_sse("message_stop", {"type": "message_stop"}))
    return events


def routes(state: MockState) -> list[Route]:
    async def messages(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "malformed JSON")
        if not isinstance(body, dict) or not body.get("messages") or not body.get("max_tokens"):
            return error(400, "messages and max_tokens are required")
        if not request.headers.get("x-api-key") and not request.headers.get("authorization"):
            return error(401, "x-api-key header is required")
        model = str(body.get("model", "unknown"))
        fault = await state.gate(model, body, api="anthropic")
        if fault in HTTP_FAULTS:
            msg = "Overloaded" if fault == "529" else f"mock fault {fault} for {model}"
            return error(int(fault), msg)
        content, stop = _content(model, body, state.settings.chunks)
        message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
                   "content": content, "stop_reason": stop, "stop_sequence": None,
                   "usage": _usage(_prompt(body), content)}
        if body.get("stream"):
            events = stream_events(message, state.settings.chunks)
            return StreamingResponse(state.paced(events, fault), media_type="text/event-stream")
        state.counts["completed"] += 1
        return Response(dumps(message), media_type="application/json")

    return [Route("/v1/messages", messages, methods=["POST"])]
