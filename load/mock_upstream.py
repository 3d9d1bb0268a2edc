"""The mock providers' server: the "external models" for tests, `make run` and benches.

This module is the OpenAI-compatible one and the app that mounts all of them on one port:
Anthropic Messages (load/mock_anthropic.py), Gemini (load/mock_gemini.py), Cohere v2 chat
(load/mock_cohere.py) and Ollama's native API (load/mock_ollama.py: NDJSON streams) share its
settings, faults and counters (load/mock_core.py), so LiteLLM's translation to each
provider's own wire format runs for real against one process.

The OpenAI mock answers `/v1/chat/completions` and `/v1/completions` (plain and SSE streaming, with usage;
tool calls when a request offers tools and asks for one; a JSON `response_format` gets an instance of
its schema) and `/v1/embeddings` (deterministic
vectors, float or base64; load/mock_openai_extras.py) after a configurable latency, and injects
faults per model name: HTTP 400/401/429/5xx/529, a timeout (never answers), a connection
dropped mid-stream, or a stream that stalls after its first chunk (`stall`) or before it
(`silent`). It counts what it saw, including streams
the client closed early, so tests can assert that a gateway cancelled its upstream call.

It is a bare Starlette app on uvicorn (uvloop + httptools) so it is never the bottleneck of
a benchmark. `GET/POST /_mock/state` reads and changes the behaviour at run time;
`GET /_mock/last/{model}` returns the last request body a model received (pass-through tests);
`GET /_mock/requests` the recent requests with their headers (load/mock_recorder.py).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from load.mock_core import FAULTS, HTTP_FAULTS, MockSettings, MockState, answer_words, dumps, split_text, structured_answer
from load.mock_openai_extras import embeddings_payload, tool_call, tool_call_chunks
from load.mock_script import scripted_refusal, scripted_turn

__all__ = ["FAULTS", "MockSettings", "MockState", "build_app", "parse_faults", "serve"]

_dumps = dumps
_answer_words = answer_words


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return " ".join(parts)
    p = body.get("prompt", "")
    return p if isinstance(p, str) else " ".join(map(str, p))


def _error(status: int, message: str, etype: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": etype, "param": None, "code": str(status)}}, status)


def build_app(settings: MockSettings | None = None) -> Starlette:
    """One app for every mock provider: OpenAI's routes here, the others from their modules."""
    from load import mock_anthropic, mock_cohere, mock_gemini, mock_ollama

    state = MockState(settings or MockSettings())

    async def handle(request: Request, kind: str) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            state.counts["requests"] += 1
            return _error(400, "malformed JSON", "invalid_request_error")
        model = str(body.get("model", "unknown"))
        fault = await state.gate(model, body)
        if fault in HTTP_FAULTS:
            etype = {"429": "rate_limit_error", "400": "invalid_request_error",
                     "401": "authentication_error"}.get(fault, "server_error")
            return _error(int(fault), f"mock fault {fault} for {model}", etype)
        s = state.settings
        if kind == "embedding":
            payload = embeddings_payload(model, body)
            if payload is None:
                return _error(400, "'input' must be a string, a list of strings or token lists", "invalid_request_error")
            state.counts["completed"] += 1
            return Response(dumps(payload), media_type="application/json")
        call = tool_call(body) if kind == "chat" else None
        prompt = _prompt_text(body)
        words = split_text(s.answers[model], s.chunks) if model in s.answers else answer_words(model, prompt, s.chunks)
        if kind == "chat" and call is None and model not in s.answers and (structured := structured_answer(body)):
            words = split_text(structured, s.chunks)  # honours response_format, as a provider does
        if kind == "chat" and (refusal := scripted_refusal(s.tool_script.get(model), body)) is not None:
            return _error(400, refusal, "BadRequestError")
        if kind == "chat" and model in s.tool_script:  # a scripted agent turn: a tool call, then text
            scripted, text = scripted_turn(s.tool_script[model], body)
            if scripted is not None or text is not None:
                call, words = scripted, split_text(text, s.chunks) if text is not None else words
        usage = {
            "prompt_tokens": max(1, len(prompt.split())),
            "completion_tokens": len(words),
            "total_tokens": max(1, len(prompt.split())) + len(words),
        }
        rid = f"mock-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        if call is not None:
            usage["completion_tokens"] = max(1, len(call["function"]["arguments"]) // 4)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            events = _stream_events(kind, model, rid, created, words, usage, body, call)
            return StreamingResponse(state.paced(events, fault), media_type="text/event-stream")
        state.counts["completed"] += 1
        text = "".join(words)
        if kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
            payload = {
                "id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if call else "stop", "logprobs": None}],
                "usage": usage,
            }
        else:
            payload = {
                "id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": usage,
            }
        return Response(dumps(payload), media_type="application/json")

    async def chat(request: Request) -> Response:
        return await handle(request, "chat")

    async def completions(request: Request) -> Response:
        return await handle(request, "completion")

    async def embeddings(request: Request) -> Response:
        return await handle(request, "embedding")

    async def models(_: Request) -> Response:
        names = sorted(state.by_model) or ["mock"]
        return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                           "owned_by": "mock"} for n in names]})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def mock_state(request: Request) -> Response:
        if request.method == "POST":
            patch = json.loads(await request.body() or b"{}")
            if patch.pop("reset_counts", False):
                state.reset_counts()
            state.settings = MockSettings(**{**state.settings.model_dump(), **patch})
        return JSONResponse(state.snapshot())

    async def last_body(request: Request) -> Response:
        """The last request body a model received, exactly as the provider saw it (tests)."""
        model = request.path_params["model"]
        if model not in state.last_body:
            return _error(404, f"no request for {model!r} yet", "not_found_error")
        return JSONResponse(state.last_body[model])

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/_mock/state", mock_state, methods=["GET", "POST"]),
        Route("/_mock/last/{model:path}", last_body, methods=["GET"]),
        *mock_anthropic.routes(state),
        *mock_gemini.routes(state),
        *mock_cohere.routes(state),
        *mock_ollama.routes(state),
    ])
    from load.mock_recorder import RequestRecorder

    app.add_middleware(RequestRecorder)
    return app


def _stream_events(kind: str, model: str, rid: str, created: int, words: list[str],
                   usage: dict[str, int], body: dict[str, Any], call: dict[str, Any] | None = None) -> list[bytes]:
    """OpenAI SSE chunks: one per word (or the tool call's), a finish chunk, a usage chunk with no
    choices when asked (`stream_options.include_usage`), `[DONE]`."""
    events = []
    if call is not None:  # a tool call instead of text
        words = []
        for chunk in tool_call_chunks(call, {"id": rid, "object": "chat.completion.chunk", "created": created,
                                             "model": model}):
            events.append(b"data: " + dumps(chunk) + b"\n\n")
    for i, word in enumerate(words):
        if kind == "chat":
            delta: dict[str, Any] = {"content": word}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        else:
            chunk = {"id": rid, "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": 0, "text": word, "finish_reason": None}]}
        events.append(b"data: " + dumps(chunk) + b"\n\n")
    last: dict[str, Any] = {"id": rid, "created": created, "model": model}
    if kind == "chat":
        last.update(object="chat.completion.chunk",
                    choices=[{"index": 0, "delta": {}, "finish_reason": "tool_calls" if call else "stop"}])
    else:
        last.update(object="text_completion", choices=[{"index": 0, "text": "", "finish_reason": "stop"}])
    events.append(b"data: " + dumps(last) + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):  # as OpenAI: a last chunk, no choices
        tail = {k: v for k, v in last.items() if k != "choices"}
        events.append(b"data: " + dumps({**tail, "choices": [], "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def parse_faults(items: list[str] | None) -> dict[str, str]:
    """`--fault 500` (every model) or `--fault gpt-4-turbo=timeout` (one model)."""
    faults: dict[str, str] = {}
    for item in items or []:
        model, _, fault = item.rpartition("=")
        if fault not in FAULTS:
            raise argparse.ArgumentTypeError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
        faults[model or "*"] = fault
    return faults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--latency-ms", type=float, default=50.0, help="delay before the first byte")
    p.add_argument("--chunks", type=int, default=8, help="content chunks per streamed answer")
    p.add_argument("--chunk-interval-ms", type=float, default=0.0)
    p.add_argument("--fault", action="append", metavar="[MODEL=]FAULT",
                   help=f"inject a fault ({', '.join(FAULTS)}); repeatable, per model with MODEL=")
    p.add_argument("--fault-rate", type=float, default=1.0, help="share of requests a configured fault hits (spread evenly)")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = MockSettings(latency_ms=args.latency_ms, chunks=args.chunks,
                            chunk_interval_ms=args.chunk_interval_ms, faults=parse_faults(args.fault),
                            fault_rate=args.fault_rate)
    uvicorn.run(build_app(settings), host=args.host, port=args.port, log_level="warning",
                access_log=False, loop="auto", http="auto", timeout_keep_alive=60, backlog=4096)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doka mock-upstream", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
