"""The gateway's FastAPI app: its routers, OpenAPI spec and error handlers (no routes of its own).

The Serve deployment (deployments/ingress.py) and its Batch API routes (deployments/batch_routes.py)
register their methods on this `app`; every error leaves in OpenAI's shape (app/request/http.py).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from accounts import api_key_from_headers
from accounts.gateway import admin_router
from app import anthropic_api, responses_api
from app.errors import OpenAIError, bad_request
from app.request.http import error_response
from app.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from console.routes import console_router

logger = logging.getLogger("ray.serve")

app = FastAPI(title="doka", description="OpenAI-compatible LLM gateway on Ray Serve", docs_url="/docs")
app.include_router(admin_router())  # key/usage admin API, master key only
app.include_router(console_router())  # the operator console, docs/console.md


def _openapi() -> dict[str, Any]:
    """FastAPI's spec plus the request bodies the model endpoints read themselves (shown at /docs).

    The endpoints read raw JSON (to bound its size and answer errors in their own shape), so
    FastAPI cannot see their body models; the same pydantic models that validate them are added.
    """
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for path, model in (("/v1/chat/completions", ChatCompletionRequest), ("/v1/completions", CompletionRequest),
                        ("/v1/embeddings", EmbeddingRequest), ("/v1/messages", anthropic_api.MessagesRequest),
                        ("/v1/messages/count_tokens", anthropic_api.CountTokensRequest),
                        ("/v1/responses", responses_api.ResponsesRequest)):
        op = spec.get("paths", {}).get(path, {}).get("post")
        if op is None:
            continue
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    app.openapi_schema = spec
    return spec


app.openapi = _openapi  # type: ignore[method-assign]


def metrics_caller_is_master(headers: Any, master: str | None) -> bool:
    """True for the master key (Bearer or x-api-key), False with no key; 401 for any other key."""
    given = api_key_from_headers(headers)
    if not given:
        return False
    if master and hmac.compare_digest(given.encode(), master.encode()):
        return True
    raise OpenAIError(401, "per-key metrics need the master key; scrape /metrics without a key for the "
                      "gateway series", type="authentication_error", code="invalid_master_key")


@app.exception_handler(OpenAIError)
async def _openai_error(request: Request, e: OpenAIError) -> JSONResponse:
    return error_response(request, e)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    return error_response(request, bad_request(f"Invalid request: {e.errors()[0].get('msg', 'invalid')}"))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    msg = "Not found" if e.status_code == 404 else str(e.detail)
    return error_response(request, OpenAIError(e.status_code, msg))


@app.exception_handler(Exception)
async def _server_error(request: Request, e: Exception) -> JSONResponse:
    logger.exception("ingress: unhandled error")
    return error_response(request, OpenAIError(500, f"Internal gateway error: {type(e).__name__}", type="server_error"))
