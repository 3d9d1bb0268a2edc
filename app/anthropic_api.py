"""Anthropic Messages API <-> OpenAI chat: what `POST /v1/messages` speaks on each side.

The ingress keeps one request path (OpenAI chat bodies through keys, routing, fallbacks and the
ledger); this module only translates at the edges, so any backend (an OpenAI-format mock, a
LiteLLM-translated provider, a local vLLM model) can answer an Anthropic SDK or Claude Code.

Hand-written on purpose: LiteLLM's own adapter
(`litellm.llms.anthropic.pass_through.adapters.transformation`) pulls all of litellm into the
ingress process, which otherwise never imports it: +2.9 s of start-up and +135 MB resident
(measured in docs/benchmarks.md, "Anthropic Messages translation"). Pydantic models of the
request fields and content blocks (text, image, tool_use, tool_result; app/anthropic_schema.py)
and a few dict comprehensions cover the Messages API, non-stream answers and the SSE event
sequence the SDK expects.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError

from app.anthropic_schema import (
    CountTokensRequest, DocumentBlock, ImageBlock, MessagesBase, MessagesRequest, SearchResultBlock,
    ServerBlock, TextBlock, ToolChoice, ToolReferenceBlock, ToolResultBlock, ToolUseBlock,
)
from app.errors import OpenAIError, bad_request
from app.schemas import first_choice_delta

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error",
    429: "rate_limit_error", 499: "api_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
    504: "api_error", 529: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


# ------------------------------------------------------------------ errors
class AnthropicShape:
    """Marks a request whose errors must be Anthropic's `{"type": "error", "error": {...}}`."""

    STATE_KEY = "doka_error_shape"
    NAME = "anthropic"


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def error_event(status: int, message: str) -> bytes:
    return b"event: error\ndata: " + json.dumps(error_body(status, message)).encode() + b"\n\n"


def validate(model: type[BaseModel], body: Any) -> Any:
    """A parsed body as `model`; a failure is a 400 naming the first bad field (shaped by the caller)."""
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        # a content union fails once per branch: the deepest error is the one that names the problem
        first = max(e.errors(), key=lambda err: len(err["loc"]))
        loc = ".".join(str(x) for x in first["loc"] if not (isinstance(x, str) and ("[" in x or x == "str")))
        if first["type"] == "missing":
            raise bad_request(f"{loc}: Field required", param=loc, code="missing_required_parameter") from None
        raise bad_request(f"{loc}: {first['msg']}", param=loc, code="invalid_value") from None


# ------------------------------------------------------------------ request: Anthropic -> OpenAI chat
def _text_of(blocks: str | list[Any] | None) -> str:
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    return "\n".join(t for b in blocks if (t := _block_text(b)))


def _block_text(b: Any) -> str:
    """The words of a text-like block (text, search result, text document, tool reference)."""
    if isinstance(b, TextBlock):
        return b.text
    if isinstance(b, SearchResultBlock):
        return "\n".join(x for x in (b.title, b.source, *(c.text for c in b.content)) if x)
    if isinstance(b, ToolReferenceBlock):
        return f"[tool: {b.tool_name}]" if b.tool_name else ""
    if isinstance(b, DocumentBlock):
        part = _document_part(b)
        return part["text"] if part["type"] == "text" else ""
    return ""


def _refuse_file(kind: str) -> OpenAIError:
    return bad_request(f"{kind} source of type 'file' refers to Anthropic's Files API, which doka does not "
                       "have: send the content as base64, text or a URL", param="messages")


def _image_part(block: ImageBlock) -> dict[str, Any]:
    src = block.source
    if src.type == "file":
        raise _refuse_file("image")
    if src.type == "url":
        if not src.url:
            raise bad_request("image source of type 'url' needs 'url'", param="messages")
        return {"type": "image_url", "image_url": {"url": src.url}}
    if not src.data or not src.media_type:
        raise bad_request("image source of type 'base64' needs 'media_type' and 'data'", param="messages")
    return {"type": "image_url", "image_url": {"url": f"data:{src.media_type};base64,{src.data}"}}


def _document_part(block: DocumentBlock) -> dict[str, Any]:
    """A document as an OpenAI content part: text sources as text, a base64 PDF as a `file`
    part, a URL as a line naming it (OpenAI's chat format has no URL documents)."""
    src = block.source
    kind = src.get("type")
    head = f"{block.title}\n" if block.title else ""
    if kind == "text":
        return {"type": "text", "text": head + str(src.get("data") or "")}
    if kind == "content":
        content = src.get("content")
        text = content if isinstance(content, str) else "\n".join(
            str(c.get("text", "")) for c in content or [] if isinstance(c, dict) and c.get("type") == "text")
        return {"type": "text", "text": head + text}
    if kind == "base64":
        if not src.get("data"):
            raise bad_request("document source of type 'base64' needs 'data'", param="messages")
        media = src.get("media_type") or "application/pdf"
        return {"type": "file", "file": {"filename": block.title or "document.pdf",
                                         "file_data": f"data:{media};base64,{src['data']}"}}
    if kind == "url":
        return {"type": "text", "text": f"{head}[document: {src.get('url')}]"}
    if kind == "file":
        raise _refuse_file("document")
    raise bad_request(f"document source type {kind!r} is not one of base64, text, content, url", param="messages")


def _server_block(b: Any) -> OpenAIError:
    return bad_request(f"content blocks of type {b.type!r} come from Anthropic's server tools, which doka does "
                       "not run; doka's backends take custom tools only", param="messages",
                       code="server_tools_unsupported")


def _user_messages(content: str | list[Any]) -> list[dict[str, Any]]:
    """One Anthropic user turn: tool results become `tool` messages (first, as OpenAI wants them
    right after the assistant's tool calls), the rest one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for b in content:
        if isinstance(b, ToolResultBlock):
            text = _text_of(b.content)
            if isinstance(b.content, list):  # OpenAI tool messages carry text only: the rest follows as user content
                parts.extend(_image_part(i) for i in b.content if isinstance(i, ImageBlock))
                parts.extend(p for d in b.content if isinstance(d, DocumentBlock)
                             and (p := _document_part(d))["type"] != "text")
            out.append({"role": "tool", "tool_call_id": b.tool_use_id,
                        "content": f"Error: {text}" if b.is_error else text})
        elif isinstance(b, (TextBlock, SearchResultBlock)):
            parts.append({"type": "text", "text": _block_text(b)})
        elif isinstance(b, ImageBlock):
            parts.append(_image_part(b))
        elif isinstance(b, DocumentBlock):
            parts.append(_document_part(b))
        elif isinstance(b, ToolUseBlock):
            raise bad_request("tool_use blocks belong in assistant messages", param="messages")
        elif isinstance(b, ServerBlock):
            raise _server_block(b)
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": parts[0]["text"] if only_text and len(parts) == 1 else parts})
    return out


def _assistant_message(content: str | list[Any]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    for b in content:
        if isinstance(b, ServerBlock):
            raise _server_block(b)
        if isinstance(b, (ImageBlock, DocumentBlock, ToolResultBlock)):
            raise bad_request("assistant messages may hold only text, tool_use and thinking blocks", param="messages")
    text = "".join(_block_text(b) for b in content if isinstance(b, (TextBlock, SearchResultBlock)))
    calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
             for b in content if isinstance(b, ToolUseBlock)]
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_choice(choice: ToolChoice) -> Any:
    if choice.type == "tool":
        if not choice.name:
            raise bad_request("tool_choice of type 'tool' needs 'name'", param="tool_choice")
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def chat_messages(req: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    """The OpenAI messages: one leading system message (the `system` field, then every
    `system`-role turn in order: many backends' chat templates take a system prompt only
    first), then the user and assistant turns."""
    system = [_text_of(req.system)] if req.system else []
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role == "system":
            system.append(_text_of(m.content))
        elif m.role == "user":
            messages.extend(_user_messages(m.content))
        else:
            messages.append(_assistant_message(m.content))
    text = "\n\n".join(t for t in system if t)
    return ([{"role": "system", "content": text}] if text else []) + messages


# `thinking` / `output_config.effort` -> OpenAI's reasoning_effort (sent only to models known to
# reason: app/capabilities.for_model drops it for the others)
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def reasoning_effort(req: MessagesBase) -> str | None:
    thinking = req.thinking
    if thinking is None or thinking.type == "disabled":
        return None
    effort = req.output_config.effort if req.output_config is not None else None
    if effort is not None:
        return _EFFORT[effort]
    budget = thinking.budget_tokens
    if thinking.type == "enabled" and budget:
        return "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    return "medium"


def _tools(req: MessagesBase) -> list[dict[str, Any]]:
    out = []
    for i, t in enumerate(req.tools or []):
        if t.type not in (None, "custom") or t.input_schema is None:
            if t.input_schema is None and t.type in (None, "custom"):
                raise bad_request(f"tools.{i}.input_schema: Field required", param=f"tools.{i}.input_schema",
                                  code="missing_required_parameter")
            raise bad_request(f"tools.{i}: {t.type!r} is one of Anthropic's built-in/server tools, which doka's "
                              "backends cannot run; declare it as a custom tool (name, description, input_schema)",
                              param=f"tools.{i}.type", code="server_tools_unsupported")
        fn: dict[str, Any] = {"name": t.name, "parameters": t.input_schema}
        if t.description:
            fn["description"] = t.description
        out.append({"type": "function", "function": fn})
    return out


def to_chat(req: MessagesRequest) -> dict[str, Any]:
    """The OpenAI chat body that asks any backend what `req` asks Claude."""
    body: dict[str, Any] = {"model": req.model, "messages": chat_messages(req), "max_tokens": req.max_tokens}
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    if req.mcp_servers:
        raise bad_request("mcp_servers needs Anthropic's MCP connector, which doka does not run; "
                          "connect MCP servers in the client (Claude Code does)", param="mcp_servers",
                          code="server_tools_unsupported")
    tools = _tools(req)
    if tools:
        body["tools"] = tools
    if req.tool_choice is not None and tools:
        body["tool_choice"] = _tool_choice(req.tool_choice)
        if req.tool_choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    effort = reasoning_effort(req)
    if effort is not None:
        body["reasoning_effort"] = effort
    fmt = (req.output_config.format if req.output_config is not None else None) or req.output_format
    if fmt is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": fmt.schema_, "strict": True}}
    if req.metadata is not None and req.metadata.user_id:
        body["user"] = req.metadata.user_id[:256]
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    if req.doka is not None:  # doka's routing extension passes through (cost weight, candidates)
        body["doka"] = req.doka
    return body


# ------------------------------------------------------------------ answer: OpenAI chat -> Anthropic
def _usage(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {"input_tokens": int(usage.get("prompt_tokens") or 0), "output_tokens": int(usage.get("completion_tokens") or 0)}


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"value": value}


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def from_chat(result: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic `message` (first choice)."""
    choice = (result.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                        "name": fn.get("name", ""), "input": _arguments(fn.get("arguments"))})
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": _usage(result.get("usage"))}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class MessagesDialect:
    """OpenAI chat answers and chunks in, Anthropic's message and SSE events out (one per request).

    message_start, then per block content_block_start / *_delta / content_block_stop (text as
    text_delta, tool calls as tool_use + input_json_delta), and at the end message_delta with
    stop_reason and usage (OpenAI sends usage after the finish reason) and message_stop.
    """

    def __init__(self, model: str, input_estimate: int = 0) -> None:
        self.model = model
        self.id = message_id()
        self.input_estimate = input_estimate
        self.started = False
        self.block: int = -1  # index of the open block, -1: none
        self.kind: str | None = None  # "text" or "tool:<openai index>"
        self.tools: dict[int, int] = {}
        self.stop_reason = "end_turn"
        self.usage: dict[str, Any] | None = None

    def answer(self, result: dict[str, Any]) -> dict[str, Any]:
        return from_chat(result, self.model)

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        return [_event("message_start", {"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0}}})]

    def _close_block(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind = None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self.block})]

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self.block += 1
        self.kind = kind
        out.append(_event("content_block_start", {"type": "content_block_start", "index": self.block,
                                                  "content_block": block}))
        return out

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = self._start()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        text, calls, finish = first_choice_delta(chunk)
        if text:
            if self.kind != "text":
                out += self._open_block("text", {"type": "text", "text": ""})
            out.append(_event("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                      "delta": {"type": "text_delta", "text": text}}))
        for call in calls:
            i = int(call.get("index") or 0)
            fn = call.get("function") or {}
            if i not in self.tools:
                out += self._open_block(f"tool:{i}", {"type": "tool_use", "name": fn.get("name") or "", "input": {},
                                                      "id": call.get("id") or "toolu_" + uuid.uuid4().hex[:24]})
                self.tools[i] = self.block
            if fn.get("arguments") and self.kind == f"tool:{i}":
                out.append(_event("content_block_delta", {
                    "type": "content_block_delta", "index": self.block,
                    "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}}))
        if finish:
            self.stop_reason = STOP_REASONS.get(finish, "end_turn")
        return b"".join(out)

    def end(self) -> bytes:
        out = self._start() + self._close_block()
        out.append(_event("message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                            "usage": _usage(self.usage)}))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, e: OpenAIError) -> bytes:
        return error_event(e.status, e.message)
