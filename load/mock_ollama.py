"""A mock of Ollama's native API (`/api/chat`, `/api/tags`, `/api/show`, `/api/version`).

Ollama's own wire format, as LiteLLM's `ollama_chat/` provider speaks it: `messages` in,
`message` out; streaming is Ollama's default (`stream` absent means true) and is NDJSON, one
JSON object a line, `done: false` until the last line, which has `done: true`, `done_reason`
and the usage (`prompt_eval_count`, `eval_count`). Tool calls come in Ollama's shape,
`message.tool_calls[{function: {name, arguments}}]` with `arguments` an object (not a JSON
string), when the request offers `tools` and the last user turn asks for one (Ollama has no
`tool_choice`); a `tool` message back is answered naming what the tool said; `format` (`"json"`
or a JSON schema) gets JSON text (an instance of the schema). Errors are
`{"error": "..."}`. Latency and faults come from load/mock_core.py, like the other mocks.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from load.mock_core import HTTP_FAULTS, MockState, answer_words, dumps, json_answer, sample_args, split_text, wants_tool

# what `/api/tags` lists besides every model asked for so far (the home-lab CPU tier's model)
DEFAULT_MODELS = ("qwen2.5:3b",)
CONTEXT_LENGTH = 32768
# a chat template that mentions tools: LiteLLM's `/api/show` reading takes it as "supports tools"
TEMPLATE = "{{- if .Tools }}<tools>{{ range .Tools }}{{ . }}{{ end }}</tools>{{ end }}{{ .Prompt }}"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def _created_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _prompt(messages: list[dict[str, Any]]) -> str:
    return " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))


def answer(model: str, body: dict[str, Any], chunks: int) -> tuple[list[str], list[dict[str, Any]]]:
    """The answer's text pieces (one per streamed line) and its tool calls (Ollama's shape)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return split_text(f"mock answer from {model}: the tool said {last.get('content', '')}", chunks), []
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    if tools and last.get("role") == "user" and wants_tool(str(last.get("content") or ""), False):
        fn = tools[0].get("function") or {}
        return [], [{"function": {"name": fn.get("name", "tool"), "arguments": sample_args(fn.get("parameters"))}}]
    fmt = body.get("format")  # "json", or a JSON schema (structured outputs)
    if fmt == "json" or isinstance(fmt, dict):
        return split_text(json_answer(fmt if isinstance(fmt, dict) else None), chunks), []
    return answer_words(model, _prompt(messages), chunks), []


def _line(model: str, content: str, calls: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return {"model": model, "created_at": _created_at(), "message": message, **extra}


def _done(prompt_tokens: int, eval_tokens: int) -> dict[str, Any]:
    """The fields of the last line (and of a plain answer): why it ended, counts, durations (ns)."""
    return {"done_reason": "stop", "done": True, "total_duration": 1_000_000, "load_duration": 100_000,
            "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 200_000,
            "eval_count": eval_tokens, "eval_duration": 700_000}


def usage(body: dict[str, Any], pieces: list[str], calls: list[dict[str, Any]]) -> tuple[int, int]:
    """(prompt_eval_count, eval_count): prompt words, and answer pieces (a tool call's JSON / 4)."""
    n_in = max(1, len(_prompt([m for m in body.get("messages") or [] if isinstance(m, dict)]).split()))
    n_out = max(1, len(json.dumps(calls)) // 4) if calls else max(1, len(pieces))
    return n_in, n_out


def stream_lines(model: str, pieces: list[str], calls: list[dict[str, Any]], counts: tuple[int, int]) -> list[bytes]:
    """The answer as Ollama streams it: NDJSON, a line per piece (the tool calls in one), then `done`."""
    lines = [_line(model, "", calls, done=False)] if calls else []
    lines += [_line(model, piece, done=False) for piece in pieces]
    lines.append(_line(model, "", **_done(*counts)))
    return [dumps(line) + b"\n" for line in lines]


def routes(state: MockState) -> list[Route]:
    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "invalid character in request body")
        if not isinstance(body, dict) or not body.get("model"):
            return error(400, "model is required")
        if not isinstance(body.get("messages", []), list):
            return error(400, "messages must be a list")
        model = str(body["model"])
        stream = body.get("stream", True) is not False  # Ollama streams unless told not to
        fault = await state.gate(model, body, api="ollama", stream=stream)
        if fault in HTTP_FAULTS:
            return error(int(fault), f"mock fault {fault} for {model}")
        pieces, calls = answer(model, body, state.settings.chunks)
        counts = usage(body, pieces, calls)
        if stream:
            lines = stream_lines(model, pieces, calls, counts)
            return StreamingResponse(state.paced(lines, fault), media_type="application/x-ndjson")
        state.counts["completed"] += 1
        return Response(dumps(_line(model, "".join(pieces), calls, **_done(*counts))), media_type="application/json")

    async def tags(_: Request) -> Response:
        names = sorted({*DEFAULT_MODELS, *(m for m in state.by_model if ":" in m)})
        return JSONResponse({"models": [
            {"name": n, "model": n, "modified_at": "2026-01-01T00:00:00Z", "size": 1_900_000_000,
             "digest": "0" * 64, "details": {"format": "gguf", "family": "qwen2", "parameter_size": "3.1B",
                                             "quantization_level": "Q4_K_M"}} for n in names]})

    async def show(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "invalid character in request body")
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not name:
            return error(400, "model is required")
        return JSONResponse({"modelfile": f"FROM {name}", "parameters": "", "template": TEMPLATE,
                             "details": {"format": "gguf", "family": "qwen2"},
                             "model_info": {"general.architecture": "qwen2",
                                            "qwen2.context_length": CONTEXT_LENGTH},
                             "capabilities": ["completion", "tools"]})

    async def version(_: Request) -> Response:
        return JSONResponse({"version": "0.12.0-mock"})

    return [Route("/api/chat", chat, methods=["POST"]), Route("/api/tags", tags, methods=["GET"]),
            Route("/api/show", show, methods=["POST"]), Route("/api/version", version, methods=["GET"])]
