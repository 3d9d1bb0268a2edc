"""A mock of Google's Gemini API (`models/{model}:generateContent`, `:streamGenerateContent`).

Gemini's own wire format: `contents` of `parts` in, `candidates` out, `functionCall` parts when
function declarations are given and the prompt asks for one (an answer naming the
`functionResponse` once it comes back), JSON text for `responseMimeType: application/json` (an
instance of `responseSchema`, or of a schema LiteLLM wrote into the prompt), `usageMetadata`,
SSE with `?alt=sse` (a JSON array without), and errors as `{"error": {"code", "message",
"status"}}`. Served under `/v1beta` and `/v1`, like Google's. Latency and faults come from load/mock_core.py.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from load.mock_core import (HTTP_FAULTS, MockState, answer_words, dumps, json_answer, sample_args, schema_in_text,
                            split_text, wants_tool)

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message,
                                   "status": STATUS_NAMES.get(status, "UNAVAILABLE")}}, status)


def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
    return d.get(camel, d.get(snake))


def _prompt(body: dict[str, Any]) -> str:
    parts: list[str] = []
    system = _get(body, "systemInstruction", "system_instruction") or {}
    for c in [system, *(body.get("contents") or [])]:
        for p in (c or {}).get("parts") or []:
            if "text" in p:
                parts.append(str(p["text"]))
    return " ".join(parts)


def _answer(model: str, body: dict[str, Any], chunks: int) -> list[dict[str, Any]]:
    contents = body.get("contents") or []
    last = (contents[-1].get("parts") if contents else None) or []
    responses = [_get(p, "functionResponse", "function_response") for p in last
                 if _get(p, "functionResponse", "function_response")]
    if responses:
        said = " ".join(json.dumps(r.get("response"), sort_keys=True) for r in responses)
        return [{"text": f"mock answer from {model}: the tool said {said}"}]
    decls = [d for t in body.get("tools") or [] for d in _get(t, "functionDeclarations", "function_declarations") or []]
    config = _get(_get(body, "toolConfig", "tool_config") or {}, "functionCallingConfig",
                  "function_calling_config") or {}
    mode = str(config.get("mode", "AUTO")).upper()
    asked = " ".join(str(p.get("text", "")) for p in last)
    if decls and mode != "NONE" and wants_tool(asked, mode == "ANY"):
        allowed = _get(config, "allowedFunctionNames", "allowed_function_names") or []
        decl = next((d for d in decls if d.get("name") in allowed), decls[0])
        return [{"functionCall": {"name": decl["name"], "args": sample_args(decl.get("parameters"))}}]
    gen = _get(body, "generationConfig", "generation_config") or {}
    schema = (_get(gen, "responseJsonSchema", "response_json_schema") or _get(gen, "responseSchema", "response_schema")
              or schema_in_text(_prompt(body)))
    if schema or _get(gen, "responseMimeType", "response_mime_type") == "application/json":
        return [{"text": json_answer(schema)}]  # JSON mode
    return [{"text": "".join(answer_words(model, _prompt(body), chunks))}]


def _usage(prompt: str, parts: list[dict[str, Any]]) -> dict[str, int]:
    out = sum(len(p.get("text", "").split()) or len(json.dumps(p).split()) for p in parts)
    n_in = max(1, len(prompt.split()))
    return {"promptTokenCount": n_in, "candidatesTokenCount": max(1, out), "totalTokenCount": n_in + max(1, out)}


def _response(model: str, parts: list[dict[str, Any]], finish: str | None, usage: dict[str, int] | None) -> dict:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [cand], "modelVersion": model}
    if usage:
        out["usageMetadata"] = usage
    return out


def stream_chunks(model: str, parts: list[dict[str, Any]], usage: dict[str, int], chunks: int) -> list[dict]:
    """The answer as Gemini streams it: text split over chunks, usage on the last one."""
    if len(parts) == 1 and "text" in parts[0]:
        pieces = split_text(parts[0]["text"], chunks)
        out = [_response(model, [{"text": t}], None, None) for t in pieces[:-1]]
        out.append(_response(model, [{"text": pieces[-1]}], "STOP", usage))
        return out
    return [_response(model, parts, "STOP", usage)]


def routes(state: MockState) -> list[Route]:
    async def generate(request: Request) -> Response:
        model, _, method = request.path_params["target"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            return error(404, f"unknown method {request.path_params['target']!r}")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "malformed JSON")
        if not isinstance(body, dict) or not body.get("contents"):
            return error(400, "contents is required")
        if not request.headers.get("x-goog-api-key") and not request.query_params.get("key"):
            return error(401, "API key not valid. Please pass a valid API key.")
        fault = await state.gate(model, body, api="gemini", stream=method == "streamGenerateContent")
        if fault in HTTP_FAULTS:
            msg = "The model is overloaded. Please try again later." if fault in ("503", "529") else \
                f"mock fault {fault} for {model}"
            return error(int(fault), msg)
        parts = _answer(model, body, state.settings.chunks)
        usage = _usage(_prompt(body), parts)
        finish = "STOP"
        if method == "generateContent":
            state.counts["completed"] += 1
            return Response(dumps(_response(model, parts, finish, usage)), media_type="application/json")
        chunks = stream_chunks(model, parts, usage, state.settings.chunks)
        if request.query_params.get("alt") != "sse":
            state.counts["completed"] += 1
            return Response(dumps(chunks), media_type="application/json")
        events = [b"data: " + dumps(c) + b"\r\n\r\n" for c in chunks]
        return StreamingResponse(state.paced(events, fault), media_type="text/event-stream")

    return [Route(f"/{version}/models/{{target:path}}", generate, methods=["POST"]) for version in ("v1beta", "v1")]
