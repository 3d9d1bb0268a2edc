"""OpenAI Responses API <-> chat: what `POST /v1/responses` speaks on each side.

A Responses request (input string or input items, instructions, max_output_tokens, function,
custom and namespace tools, stream) becomes a chat body that goes down the ingress's one request
path; the answer comes back as a `response` object, or as the Responses SSE event sequence
(response.created, response.output_text.delta, ..., response.completed with usage).

Tools: a chat model takes functions, so a `custom` tool (free-form text input) becomes a function
with one string argument `input` and its calls come back as `custom_tool_call` items, and a
`namespace`'s tools become functions named `<namespace>__<name>` whose calls come back with their
`namespace`. Tools that OpenAI's servers run (web search, file search, code interpreter, image
generation, remote MCP, computer use, tool search) have nothing to run them behind a chat
backend: they are left out of the request and named in `x-doka-tools-dropped`, so agents that
always offer them (Codex CLI offers web_search on every turn) still work. Any other tool type is
a 400. `reasoning` input items (another provider's encrypted reasoning) are skipped;
`reasoning.effort` becomes chat's `reasoning_effort`.

Stateless: doka stores no responses, so `previous_response_id` (and `store: true` semantics
beyond the answer itself) is refused with a 400 that says so. Hand-written rather than
LiteLLM's `responses.litellm_completion_transformation` for the same reason as
app/anthropic_api.py: it would import all of litellm into the ingress.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.errors import OpenAIError, bad_request
from app.schemas import first_choice_delta


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputItem(_Open):
    """A message item (`type` "message" or absent), a function or custom tool call and its output,
    or a `reasoning` item (skipped)."""

    type: Literal["message", "function_call", "function_call_output", "custom_tool_call",
                  "custom_tool_call_output", "reasoning"] | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[dict[str, Any]] | None = None
    call_id: str | None = None
    name: str | None = None
    namespace: str | None = None
    arguments: str | None = None
    input: str | None = None
    output: str | list[dict[str, Any]] | None = None


class FunctionTool(_Open):
    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomTool(_Open):
    """A tool whose input is free-form text (`format`: text or a grammar, not enforced here)."""

    type: Literal["custom"]
    name: str = Field(min_length=1)
    description: str | None = None
    format: dict[str, Any] | None = None


class NamespaceTool(_Open):
    type: Literal["namespace"]
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    tools: list[Annotated[FunctionTool | CustomTool, Field(discriminator="type")]]


class HostedTool(_Open):
    """A tool OpenAI's servers run: left out of the chat request (see the module's docstring)."""

    type: Literal["web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11",
                  "file_search", "code_interpreter", "image_generation", "mcp", "computer", "computer_use_preview",
                  "tool_search"]


Tool = Annotated[FunctionTool | CustomTool | NamespaceTool | HostedTool, Field(discriminator="type")]
NAMESPACE_SEP = "__"  # chat function names allow [A-Za-z0-9_-]: "<namespace>__<name>"


class Reasoning(_Open):
    """`reasoning`: its effort becomes chat's `reasoning_effort`, which only models known to reason
    get (app/capabilities.for_model drops it for the others); no summaries come back."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: str | None = None


class ResponsesRequest(_Open):
    """The body of `POST /v1/responses` (the fields doka translates; others are ignored)."""

    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool | None = False
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None  # `text.format`: json_schema / json_object -> chat's response_format
    reasoning: Reasoning | None = None


# ------------------------------------------------------------------ tools: Responses -> chat functions
def chat_name(name: str, namespace: str | None) -> str:
    """The chat function name of a Responses tool (`<namespace>__<name>` inside a namespace)."""
    return f"{namespace}{NAMESPACE_SEP}{name}" if namespace else name


def offered_tools(req: "ResponsesRequest") -> list[tuple[FunctionTool | CustomTool, str | None]]:
    """The tools a chat model is offered, each with its namespace (hosted tools are not among them)."""
    out: list[tuple[FunctionTool | CustomTool, str | None]] = []
    for tool in req.tools or []:
        if isinstance(tool, NamespaceTool):
            out += [(inner, tool.name) for inner in tool.tools]
        elif isinstance(tool, (FunctionTool, CustomTool)):
            out.append((tool, None))
    return out


def dropped_tools(req: "ResponsesRequest") -> list[str]:
    """The hosted tool types left out of the chat request (`x-doka-tools-dropped`)."""
    return sorted({t.type for t in req.tools or [] if isinstance(t, HostedTool)})


def _chat_tool(tool: FunctionTool | CustomTool, namespace: str | None) -> dict[str, Any]:
    if isinstance(tool, CustomTool):
        params: dict[str, Any] = {"type": "object", "required": ["input"], "additionalProperties": False,
                                  "properties": {"input": {"type": "string", "description": "the tool's input as free-form text"}}}
    else:
        params = tool.parameters or {"type": "object", "properties": {}}
    fn: dict[str, Any] = {"name": chat_name(tool.name, namespace), "parameters": params}
    if tool.description:
        fn["description"] = tool.description
    if isinstance(tool, FunctionTool) and tool.strict is not None:
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def _chat_tools(req: "ResponsesRequest") -> list[dict[str, Any]]:
    tools = [_chat_tool(t, ns) for t, ns in offered_tools(req)]
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise bad_request(f"two tools would both be the chat function {dup!r}; give them distinct names",
                          param="tools")
    return tools


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, dict):
        if choice.get("type") not in ("function", "custom") or not choice.get("name"):
            raise bad_request("tool_choice must be auto, none, required or {type: function|custom, name}",
                              param="tool_choice")
        return {"type": "function", "function": {"name": chat_name(choice["name"], choice.get("namespace"))}}
    if choice not in ("auto", "none", "required"):
        raise bad_request("tool_choice must be auto, none, required or {type: function|custom, name}", param="tool_choice")
    return choice


def _custom_input(arguments: str) -> str:
    """A custom tool's text from the one-argument function call a chat model made."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return arguments
    return args["input"] if isinstance(args, dict) and isinstance(args.get("input"), str) else arguments


# ------------------------------------------------------------------ request: Responses -> chat
def _parts(content: str | list[dict[str, Any]] | None, where: str) -> str | list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[dict[str, Any]] = []
    for p in content:
        kind = p.get("type")
        if kind in ("input_text", "output_text", "text") and isinstance(p.get("text"), str):
            parts.append({"type": "text", "text": p["text"]})
        elif kind == "input_image" and isinstance(p.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": p["image_url"],
                                                             **({"detail": p["detail"]} if p.get("detail") else {})}})
        else:
            raise bad_request(f"unsupported content part {kind!r} in {where}; doka supports input_text, "
                              "output_text and input_image with an image_url", param=where)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    for i, item in enumerate(req.input):
        where = f"input.{i}"
        if item.type == "reasoning":
            continue  # another model's (encrypted) reasoning: nothing a chat backend can read
        if item.type in ("function_call", "custom_tool_call"):
            if not item.call_id or not item.name:
                raise bad_request(f"a {item.type} item needs 'call_id' and 'name'", param=where)
            arguments = (item.arguments or "{}") if item.type == "function_call" else json.dumps({"input": item.input or ""})
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": chat_name(item.name, item.namespace), "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item.type in ("function_call_output", "custom_tool_call_output"):
            if not item.call_id:
                raise bad_request(f"a {item.type} item needs 'call_id'", param=where)
            out = _parts(item.output, where)
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": out if isinstance(out, str) else json.dumps(out)})
        else:
            if item.role is None:
                raise bad_request("a message item needs 'role'", param=f"{where}.role")
            messages.append({"role": item.role, "content": _parts(item.content, f"{where}.content")})
    if not messages:
        raise bad_request("'input' is empty", param="input")
    return messages


def to_chat(req: ResponsesRequest) -> dict[str, Any]:
    """The chat body that asks any backend what `req` asks the Responses API."""
    if req.previous_response_id:
        raise bad_request("previous_response_id is not supported: doka stores no responses; send the "
                          "conversation as input items instead", param="previous_response_id",
                          code="unsupported_parameter")
    body: dict[str, Any] = {"model": req.model, "messages": _messages(req)}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort
    tools = _chat_tools(req)
    if tools:
        body["tools"] = tools
    if req.tool_choice is not None:
        choice = _tool_choice(req.tool_choice)
        if tools:  # with only hosted tools offered there is nothing left to choose from
            body["tool_choice"] = choice
    fmt = (req.text or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        body["response_format"] = {"type": "json_object"}
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # response.completed carries the usage
    doka = getattr(req, "doka", None)
    if doka is not None:
        body["doka"] = doka
    return body


# ------------------------------------------------------------------ answer: chat -> Response
def usage_of(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    i, o = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {"input_tokens": i, "output_tokens": o, "total_tokens": i + o,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}


def _text_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


class ResponseBuilder:
    """Builds the `response` object (one per request); also the SSE translator for streams."""

    def __init__(self, req: ResponsesRequest) -> None:
        self.req = req
        self.id = "resp_" + uuid.uuid4().hex
        self.created = int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.started = False
        self.text_index: int | None = None  # output index of the open message item
        self.calls: dict[int, int] = {}  # chat tool call index -> output index
        self.custom_args: dict[int, str] = {}  # output index -> a custom tool call's JSON arguments so far
        self.origins = {chat_name(t.name, ns): (t.name, ns, isinstance(t, CustomTool)) for t, ns in offered_tools(req)}
        dropped = dropped_tools(req)
        self.extra_headers = {"x-doka-tools-dropped": ",".join(dropped)} if dropped else {}

    def _tool_item(self, call_id: str, function: str, arguments: str, status: str = "completed") -> dict[str, Any]:
        """A chat tool call as the Responses item the client's tool was: function or custom, with its namespace."""
        name, namespace, custom = self.origins.get(function, (function, None, False))
        if custom:
            item: dict[str, Any] = {"type": "custom_tool_call", "id": "ctc_" + uuid.uuid4().hex, "call_id": call_id,
                                    "name": name, "input": _custom_input(arguments) if arguments else "", "status": status}
        else:
            item = _call_item("fc_" + uuid.uuid4().hex, call_id, name, arguments, status)
        if namespace:
            item["namespace"] = namespace
        return item

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        r = self.req
        incomplete = {"reason": "max_output_tokens"} if self.finish == "length" else None
        return {"id": self.id, "object": "response", "created_at": self.created,
                "status": "incomplete" if status == "completed" and incomplete else status,
                "model": r.model, "output": output, "instructions": r.instructions, "error": None,
                "incomplete_details": incomplete, "max_output_tokens": r.max_output_tokens,
                "metadata": r.metadata or {}, "parallel_tool_calls": r.parallel_tool_calls is not False,
                "previous_response_id": None, "temperature": r.temperature, "top_p": r.top_p,
                "tool_choice": r.tool_choice if isinstance(r.tool_choice, str) else (r.tool_choice or "auto"),
                "tools": [t.model_dump(exclude_none=True) for t in r.tools or []],
                "text": {"format": {"type": "text"}}, "truncation": "disabled", "user": r.user,
                "usage": usage_of(usage) if usage is not None else None}

    def answer(self, result: dict[str, Any]) -> dict[str, Any]:
        """A chat completion as a `response` (first choice)."""
        choice = (result.get("choices") or [{}])[0]
        self.finish = choice.get("finish_reason")
        msg = choice.get("message") or {}
        output: list[dict[str, Any]] = []
        if msg.get("content"):
            output.append(_text_item("msg_" + uuid.uuid4().hex, msg["content"]))
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            output.append(self._tool_item(call.get("id") or "call_" + uuid.uuid4().hex, fn.get("name", ""),
                                          fn.get("arguments") or "{}"))
        return self.response("completed", output, result.get("usage") or {})

    # ---- streaming
    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    def _start(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        snapshot = self.response("in_progress", [], None)
        return [self._event("response.created", {"response": snapshot}),
                self._event("response.in_progress", {"response": snapshot})]

    def _close_text(self) -> list[bytes]:
        if self.text_index is None:
            return []
        i, self.text_index = self.text_index, None
        item = self.output[i]
        text = item["content"][0]["text"]
        item["status"] = "completed"
        return [self._event("response.output_text.done", {"item_id": item["id"], "output_index": i,
                                                          "content_index": 0, "text": text, "logprobs": []}),
                self._event("response.content_part.done", {"item_id": item["id"], "output_index": i, "content_index": 0,
                                                           "part": item["content"][0]}),
                self._event("response.output_item.done", {"output_index": i, "item": item})]

    def _close_calls(self) -> list[bytes]:
        out = []
        for i in self.calls.values():
            item = self.output[i]
            item["status"] = "completed"
            if item["type"] == "custom_tool_call":  # its text is whole only once the JSON arguments are
                item["input"] = _custom_input(self.custom_args.pop(i, ""))
                where = {"item_id": item["id"], "output_index": i}
                out += [self._event("response.custom_tool_call_input.delta", {**where, "delta": item["input"]}),
                        self._event("response.custom_tool_call_input.done", {**where, "input": item["input"]})]
            else:
                out.append(self._event("response.function_call_arguments.done",
                                       {"item_id": item["id"], "output_index": i, "arguments": item["arguments"]}))
            out.append(self._event("response.output_item.done", {"output_index": i, "item": item}))
        self.calls = {}
        return out

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = self._start()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        text, calls, finish = first_choice_delta(chunk)
        if text:
            if self.text_index is None:
                self.text_index = len(self.output)
                item = _text_item("msg_" + uuid.uuid4().hex, "", "in_progress")
                self.output.append(item)
                out += [self._event("response.output_item.added", {"output_index": self.text_index,
                                                                    "item": {**item, "content": []}}),
                        self._event("response.content_part.added", {
                            "item_id": item["id"], "output_index": self.text_index, "content_index": 0,
                            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})]
            item = self.output[self.text_index]
            item["content"][0]["text"] += text
            out.append(self._event("response.output_text.delta", {
                "item_id": item["id"], "output_index": self.text_index, "content_index": 0, "delta": text,
                "logprobs": []}))
        for call in calls:
            n = int(call.get("index") or 0)
            fn = call.get("function") or {}
            if n not in self.calls:
                out += self._close_text()
                self.calls[n] = len(self.output)
                item = self._tool_item(call.get("id") or "call_" + uuid.uuid4().hex, fn.get("name") or "", "",
                                       "in_progress")
                self.output.append(item)
                out.append(self._event("response.output_item.added", {"output_index": self.calls[n], "item": dict(item)}))
            i = self.calls[n]
            if fn.get("arguments") and self.output[i]["type"] == "custom_tool_call":
                self.custom_args[i] = self.custom_args.get(i, "") + fn["arguments"]
            elif fn.get("arguments"):
                self.output[i]["arguments"] += fn["arguments"]
                out.append(self._event("response.function_call_arguments.delta", {
                    "item_id": self.output[i]["id"], "output_index": i, "delta": fn["arguments"]}))
        if finish:
            self.finish = finish
        return b"".join(out)

    def end(self) -> bytes:
        out = self._start() + self._close_text() + self._close_calls()
        final = self.response("completed", self.output, self.usage or {})
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        out.append(self._event(kind, {"response": final}))
        return b"".join(out)

    def error(self, e: OpenAIError) -> bytes:
        return self._event("error", {"code": e.code or str(e.status), "message": e.message, "param": e.param})
