"""A mock of Cohere's v2 chat API (`POST /v2/chat`) in Cohere's own wire format.

OpenAI-like messages in; out a `message` with `content` blocks or `tool_calls`, a
`finish_reason` of COMPLETE / TOOL_CALL, and `usage` with `billed_units` and `tokens`; SSE
events (`message-start`, `content-start`, `content-delta`, `content-end`, `tool-call-*`,
`message-end`) when streaming; errors as `{"message": ...}`. Latency and faults come from
load/mock_core.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from load.mock_core import HTTP_FAULTS, MockState, answer_words, dumps, sample_args, split_text, wants_tool


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"id": uuid.uuid4().hex, "message": message}, status)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict))


def _answer(model: str, body: dict[str, Any], chunks: int) -> tuple[str | None, list[dict[str, Any]], str]:
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return f"mock answer from {model}: the tool said {_text(last.get('content'))}", [], "COMPLETE"
    tools = body.get("tools") or []
    forced = body.get("tool_choice") == "REQUIRED"
    if tools and body.get("tool_choice") != "NONE" and wants_tool(_text(last.get("content")), forced):
        fn = tools[0].get("function", tools[0])
        call = {"id": f"call_{uuid.uuid4().hex[:16]}", "type": "function",
                "function": {"name": fn["name"], "arguments": json.dumps(sample_args(fn.get("parameters")))}}
        return None, [call], "TOOL_CALL"
    prompt = " ".join(_text(m.get("content")) for m in messages)
    return "".join(answer_words(model, prompt, chunks)), [], "COMPLETE"


def _sse(data: dict[str, Any]) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + dumps(data) + b"\n\n"


def routes(state: MockState) -> list[Route]:
    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "invalid request: malformed JSON")
        if not isinstance(body, dict) or not body.get("messages") or not body.get("model"):
            return error(400, "invalid request: model and messages are required")
        if not request.headers.get("authorization"):
            return error(401, "no api key supplied")
        model = str(body["model"])
        fault = await state.gate(model, body, api="cohere")
        if fault in HTTP_FAULTS:
            return error(int(fault), f"mock fault {fault} for {model}")
        text, calls, finish = _answer(model, body, state.settings.chunks)
        n_in = max(1, len(" ".join(_text(m.get("content")) for m in body["messages"]).split()))
        n_out = max(1, len((text or json.dumps(calls)).split()))
        usage = {"billed_units": {"input_tokens": n_in, "output_tokens": n_out},
                 "tokens": {"input_tokens": n_in, "output_tokens": n_out}}
        rid = uuid.uuid4().hex
        message: dict[str, Any] = {"role": "assistant"}
        if text is not None:
            message["content"] = [{"type": "text", "text": text}]
        if calls:
            message["tool_calls"] = calls
            message["tool_plan"] = "I will call the tool."
        if not body.get("stream"):
            state.counts["completed"] += 1
            return Response(dumps({"id": rid, "finish_reason": finish, "message": message, "usage": usage}),
                            media_type="application/json")
        events = [_sse({"id": rid, "type": "message-start",
                        "delta": {"message": {"role": "assistant", "content": [], "tool_calls": []}}})]
        if text is not None:
            events.append(_sse({"type": "content-start", "index": 0,
                                "delta": {"message": {"content": {"type": "text", "text": ""}}}}))
            events.extend(_sse({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": t}}}})
                          for t in split_text(text, state.settings.chunks))
            events.append(_sse({"type": "content-end", "index": 0}))
        for i, call in enumerate(calls):
            events.append(_sse({"type": "tool-call-start", "index": i, "delta": {"tool_calls": [
                {"id": call["id"], "type": "function", "name": call["function"]["name"],
                 "arguments": call["function"]["arguments"]}]}}))
            events.append(_sse({"type": "tool-call-end", "index": i}))
        events.append(_sse({"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}}))
        return StreamingResponse(state.paced(events, fault), media_type="text/event-stream")

    return [Route("/v2/chat", chat, methods=["POST"])]
