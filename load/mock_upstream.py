"""An OpenAI-compatible mock provider: the "external model" for tests, `make run` and benches.

It answers `/v1/chat/completions` and `/v1/completions` (plain and SSE streaming, with usage;
tool calls when a request offers tools and asks for one) and `/v1/embeddings` (deterministic
vectors, float or base64; load/mock_openai_extras.py) after a configurable latency, and injects faults per model name: HTTP 5xx/429, a timeout
(never answers), or a connection dropped mid-stream. It counts what it saw, including streams
the client closed early, so tests can assert that a gateway cancelled its upstream call.

It is a bare Starlette app on uvicorn (uvloop + httptools) so it is never the bottleneck of
a benchmark. `GET/POST /_mock/state` reads and changes the behaviour at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections import Counter
from typing import Any, AsyncIterator

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from load.mock_openai_extras import embeddings_payload, tool_call, tool_call_chunks

FAULTS = ("none", "500", "502", "503", "429", "timeout", "drop")


class MockSettings(BaseModel):
    """Behaviour of the mock; `faults` maps a model name (or `*`) to one of FAULTS."""

    latency_ms: float = Field(50.0, ge=0)
    chunks: int = Field(8, ge=1, description="content chunks per streamed answer")
    chunk_interval_ms: float = Field(0.0, ge=0)
    faults: dict[str, str] = Field(default_factory=dict)
    fault_rate: float = Field(1.0, ge=0, le=1, description="probability a configured fault fires")

    def fault_for(self, model: str) -> str:
        fault = self.faults.get(model, self.faults.get("*", "none"))
        if fault != "none" and self.fault_rate < 1.0 and random.random() >= self.fault_rate:
            return "none"
        return fault


class MockState:
    """Settings plus counters; one per server process."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()

    def snapshot(self) -> dict[str, Any]:
        return {
            "settings": self.settings.model_dump(),
            "counts": dict(self.counts),
            "by_model": dict(self.by_model),
        }


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


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


def _answer_words(model: str, prompt: str, n: int) -> list[str]:
    base = f"mock answer from {model} to: {prompt[:40]}".split()
    words = (base * (n // max(len(base), 1) + 1))[:n] if n > len(base) else base[:n]
    return [w + " " for w in words[:-1]] + [words[-1]]


def _error(status: int, message: str, etype: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": etype, "param": None, "code": str(status)}}, status)


def build_app(settings: MockSettings | None = None) -> Starlette:
    state = MockState(settings or MockSettings())

    async def handle(request: Request, kind: str) -> Response:
        state.counts["requests"] += 1
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "malformed JSON", "invalid_request_error")
        model = str(body.get("model", "unknown"))
        state.by_model[model] += 1
        s = state.settings
        fault = s.fault_for(model)
        if fault in ("500", "502", "503", "429"):
            state.counts[f"fault_{fault}"] += 1
            etype = "rate_limit_error" if fault == "429" else "server_error"
            return _error(int(fault), f"mock fault {fault} for {model}", etype)
        if fault == "timeout":
            state.counts["fault_timeout"] += 1
            try:
                await asyncio.sleep(3600)
            finally:
                state.counts["timeout_abandoned"] += 1
        if s.latency_ms:
            await asyncio.sleep(s.latency_ms / 1000)
        if kind == "embedding":
            payload = embeddings_payload(model, body)
            if payload is None:
                return _error(400, "'input' must be a string, a list of strings or token lists", "invalid_request_error")
            state.counts["completed"] += 1
            return Response(_dumps(payload), media_type="application/json")
        call = tool_call(body) if kind == "chat" else None
        prompt = _prompt_text(body)
        words = _answer_words(model, prompt, s.chunks)
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
            return StreamingResponse(
                _stream(state, kind, model, rid, created, words, usage, fault == "drop", body, call),
                media_type="text/event-stream",
            )
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
        return Response(_dumps(payload), media_type="application/json")

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
                state.counts.clear()
                state.by_model.clear()
            state.settings = MockSettings(**{**state.settings.model_dump(), **patch})
        return JSONResponse(state.snapshot())

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/_mock/state", mock_state, methods=["GET", "POST"]),
    ])


async def _stream(state: MockState, kind: str, model: str, rid: str, created: int, words: list[str],
                  usage: dict[str, int], drop: bool, body: dict[str, Any],
                  call: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
    """SSE chunks; counts a stream as cancelled when the client goes away before the end."""
    s = state.settings
    state.counts["streams_started"] += 1
    finished = False
    try:
        if call is not None:  # a tool call instead of text
            words = []
            for chunk in tool_call_chunks(call, {"id": rid, "object": "chat.completion.chunk", "created": created,
                                                 "model": model}):
                yield b"data: " + _dumps(chunk) + b"\n\n"
        for i, word in enumerate(words):
            if drop and i == max(1, len(words) // 2):
                state.counts["fault_drop"] += 1
                finished = True
                raise ConnectionAbortedError("mock fault: connection dropped mid-stream")
            if kind == "chat":
                delta: dict[str, Any] = {"content": word}
                if i == 0:
                    delta["role"] = "assistant"
                chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            else:
                chunk = {"id": rid, "object": "text_completion", "created": created, "model": model,
                         "choices": [{"index": 0, "text": word, "finish_reason": None}]}
            yield b"data: " + _dumps(chunk) + b"\n\n"
            if s.chunk_interval_ms:
                await asyncio.sleep(s.chunk_interval_ms / 1000)
        last: dict[str, Any] = {"id": rid, "created": created, "model": model}
        if kind == "chat":
            last.update(object="chat.completion.chunk",
                        choices=[{"index": 0, "delta": {}, "finish_reason": "tool_calls" if call else "stop"}])
        else:
            last.update(object="text_completion", choices=[{"index": 0, "text": "", "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            last["usage"] = usage
        yield b"data: " + _dumps(last) + b"\n\n"
        yield b"data: [DONE]\n\n"
        finished = True
        state.counts["streams_completed"] += 1
    finally:
        if not finished:
            state.counts["streams_cancelled"] += 1


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
    p.add_argument("--fault-rate", type=float, default=1.0, help="probability that a configured fault fires")


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
