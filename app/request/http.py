"""The HTTP edges of a request: its id, its body (bounded), and errors in the endpoint's dialect."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from app import anthropic_api
from app.errors import OpenAIError, bad_request, body_too_large
from app.request.respond import loads


def request_id_of(request: Any) -> str:
    """The request's id: always generated here (uuid4 hex), never the client's.

    It keys the ledger row, the trace and `/v1/feedback`, so a client must not choose it (one
    key could otherwise score or overwrite another key's trace). Every doka response carries it
    as `x-doka-request-id` (errors included), so a response without it did not come from doka.
    """
    state = request.scope.setdefault("state", {})
    rid = state.get("doka_request_id")
    if rid is None:
        rid = state["doka_request_id"] = uuid.uuid4().hex
    return rid


def _anthropic_path(request: Request) -> bool:
    """`/v1/messages` (and its count_tokens) answers errors in Anthropic's shape, the rest in OpenAI's."""
    path = request.scope.get("path", "").rstrip("/")
    return path.endswith("/v1/messages") or path.endswith("/v1/messages/count_tokens")


def error_response(request: Request, e: OpenAIError) -> JSONResponse:
    """An error for this request's dialect, always with `x-doka-request-id`."""
    extra = {"x-doka-request-id": request_id_of(request)}
    if _anthropic_path(request):
        return JSONResponse(anthropic_api.error_body(e.status, e.message), status_code=e.status,
                            headers={**e.headers, **extra})
    return e.response(extra)


async def read_json(request: Any, limit: int) -> Any:
    """The body as JSON, refusing more than `limit` bytes (`server.max_body_bytes`; header or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise body_too_large(limit)
        except ValueError:
            raise bad_request("Invalid Content-Length header") from None
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise body_too_large(limit)
        parts.append(part)
    raw = b"".join(parts)
    if not raw.strip():
        raise bad_request("Request body is empty; send a JSON object")
    try:
        return loads(raw)
    except ValueError as e:
        raise bad_request(f"Request body is not valid JSON: {e}", code="invalid_json") from None
