"""The answer a client gets: doka's headers, the answering model's public name, the body bytes.

`OpenAIDialect` writes OpenAI's shapes; `/v1/messages` and `/v1/responses` pass their own
dialect with the same four methods (app/anthropic_api.py, app/responses_api.py), which sees the
OpenAI-shaped answer or chunks the backends produce.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from app.errors import OpenAIError
from app.request.context import RequestContext

try:
    import orjson

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency; json keeps it working without
    import json

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    loads = json.loads


class OpenAIDialect:
    """How chat/completions answers and streams are written: chunks as `data:` events, then `[DONE]`."""

    @staticmethod
    def answer(result: dict[str, Any]) -> dict[str, Any]:
        return result

    @staticmethod
    def chunk(chunk: dict[str, Any]) -> bytes:
        raw = getattr(chunk, "raw", None)  # a pass-through chunk, unchanged: its bytes as they came
        return b"data: " + (raw if raw is not None else dumps(chunk)) + b"\n\n"

    @staticmethod
    def end() -> bytes:
        return b"data: [DONE]\n\n"

    @staticmethod
    def error(e: OpenAIError) -> bytes:
        return e.sse_event()


def rename_model(result: Any, name: str) -> str | None:
    """Answer with doka's name of the model that answered, not the provider's (which goes to the
    `x-doka-upstream-model` header); returns the provider's. A pass-through chunk keeps its raw
    bytes, with the name swapped in them."""
    if not isinstance(result, dict):
        return None
    upstream = result.get("model")
    if not isinstance(upstream, str) or upstream == name:
        return upstream if isinstance(upstream, str) else None
    result["model"] = name
    raw = getattr(result, "raw", None)
    if isinstance(raw, (bytes, bytearray)):
        old, new = dumps(upstream), dumps(name)
        result.raw = raw.replace(b'"model":' + old, b'"model":' + new, 1).replace(  # type: ignore[attr-defined]
            b'"model": ' + old, b'"model": ' + new, 1)
    return upstream


def headers(ctx: RequestContext, first: Any, dialect: Any = None) -> dict[str, str]:
    """doka's response headers: who answered, why, which tiers were tried, the router's decision,
    and the dialect's own (`extra_headers`: what its translation left out).

    `first`: the answer (or first chunk), renamed to the model's public name here."""
    out = {
        "x-doka-model": ctx.model or "",
        "x-doka-route-reason": ctx.reason or "",
        "x-doka-request-id": ctx.id,
        "x-doka-tiers-tried": ",".join(ctx.tried),
    }
    decision = ctx.decision
    if decision is not None:
        out["x-doka-router"] = decision.reason[:200]
        out["x-doka-strategy"] = decision.strategy
        if decision.artifact_version:
            out["x-doka-artifact-version"] = decision.artifact_version
    upstream_model = rename_model(first, ctx.model or "")
    if upstream_model:
        out["x-doka-upstream-model"] = upstream_model
    out.update(getattr(dialect, "extra_headers", None) or {})
    return out


def answer(ctx: RequestContext, result: dict[str, Any], dialect: Any = None) -> Response:
    """A whole (non-streamed) answer as the endpoint's JSON."""
    hdrs = headers(ctx, result, dialect)
    body = result if dialect is None else dialect.answer(result)
    return Response(dumps(body), media_type="application/json", headers=hdrs)
