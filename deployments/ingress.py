"""The ingress: a thin Serve shell around the gateway core (app/request/).

It owns what needs Ray: the FastAPI routes on Serve, the handles to the backends (the egress
and each vLLM tier's application), the router (in this replica or its deployment), the
accounts handle, Serve's application status for tier health, and the replica's lifecycle
(reconfigure, graceful drain, the batch runner). Each model endpoint hands its request to
`GatewayCore.serve`, which does the rest without Ray: read the request path in app/request/.

`/v1/messages` and `/v1/responses` translate to an OpenAI chat body first (app/anthropic_api.py,
app/responses_api.py) and pass a dialect that writes the answer and the stream in their format.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from accounts.estimate import prompt_tokens
from app import anthropic_api, capabilities, responses_api
from app.config import ConfigError, DokaConfig, parse_config
from app.errors import OpenAIError, bad_request, unknown_model
from app.placement import egress_homes, router_home
from app.request.core import GatewayCore
from app.request.http import error_response, read_json
from app.request.ledger import NoAccounts
from app.request.respond import dumps, loads
from app.request.tiers import Tiers
from app.request_params import refuse_unknown
from app.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, validate_body
from deployments import stalls, tier_load
from deployments.backends import ModelBackend, backend_factories
from deployments.egress import EgressService
from deployments.router import InProcessRouter
from deployments.tier_apps import AppState, TierWatch, states_from_serve_status
from observability.gateway import Observability

logger = logging.getLogger("ray.serve")

app = FastAPI(title="doka", description="OpenAI-compatible LLM gateway on Ray Serve", docs_url="/docs")

from accounts import api_key_from_headers  # noqa: E402
from accounts.actor import master_key as configured_master_key  # noqa: E402
from accounts.gateway import admin_router  # noqa: E402  (key/usage admin API, master key only)

app.include_router(admin_router())
from console.routes import console_router  # noqa: E402  (the operator console, docs/console.md)

app.include_router(console_router())


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


def load_accounts(cfg: DokaConfig, handle: DeploymentHandle | None) -> Any:
    """`accounts.gateway.GatewayAccounts(cfg, handle)` when an accounts deployment is bound.

    A keyed config with no accounts bound is refused (app/graph.py refuses it first): the
    ingress never answers with the provider keys behind it and no key check in front."""
    if handle is None:
        if cfg.accounts.require_keys:
            raise ConfigError("accounts.require_keys is true but no accounts deployment is bound; "
                              "refusing to serve without key checks")
        return NoAccounts()
    from accounts.gateway import GatewayAccounts  # type: ignore[import-not-found]

    return GatewayAccounts(cfg, handle)


class RouterPort:
    """The core's router port (app/request/plan.py `RouterPort`) over a Router deployment handle
    or an `InProcessRouter` (both answer `.route.remote(...)` with a cancellable awaitable)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def route(self, prompt: str, cost_weight: float | None, candidates: list[str]) -> Any:
        return self.target.route.remote(prompt, cost_weight, candidates)

    def report(self, model: str, ok: bool) -> None:
        self.target.report.remote(model, ok)

    async def status(self) -> dict[str, Any]:
        return await self.target.status.remote()


async def _serve_states() -> dict[str, AppState]:
    """The Serve applications' states (TierWatch's fetch): `serve.status()` off the event loop."""
    return states_from_serve_status(await asyncio.to_thread(serve.status))


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        config: dict[str, Any],
        model_handles: dict[str, DeploymentHandle],
        router: DeploymentHandle | None,
        accounts: DeploymentHandle | None = None,
        model_capabilities: dict[str, dict] | None = None,
        down_tiers: dict[str, str] | None = None,
        tier_apps: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.cfg = cfg = parse_config(config, source="ingress deployment")
        # what each model can serve (app/capabilities.py): resolved by the graph builder, which
        # may import litellm; without it, from the config and vLLM settings only
        caps = model_capabilities if model_capabilities is not None else capabilities.resolve_all(
            cfg, lambda model: None)
        self._down = dict(down_tiers or {})  # tiers app/graph.py left out at start, and why
        self._backends = self._bind_backends(cfg, model_handles, tier_apps or {})
        # `egress.placement: ingress` (the graph bound no egress for them): providers called from here
        local = [name for name, home in egress_homes(cfg).items() if home == "Ingress"]
        self._egress = EgressService(config) if local else None
        for name in local:
            self._backends[name] = self._egress
        # local tiers' load (deployments/tier_load.py): vLLM's scheduler counts, polled in the background
        self._loads = tier_load.TierLoads({m.model_name: m.model_info.queue_limit for m in cfg.model_list})
        self._load_poller = tier_load.LoadPoller(
            {n: b.load for n, b in self._backends.items() if callable(getattr(b, "load", None))}, self._loads)
        self._load_poller.ensure_started()
        self._obs = Observability(cfg)  # spans, metrics, trace store, Langfuse, feedback
        self._backends = self._obs.wrap_backends(self._backends)  # each upstream call = one observed attempt
        # `router.placement: ingress` (no handle bound): the router runs in this replica
        self._router = router if router_home(cfg) == "Router" else InProcessRouter(config)
        self._accounts = load_accounts(cfg, accounts)
        # provider limits (accounts.provider_gate): None when no model has `model_info.limits`
        self._plimits = getattr(self._accounts, "providers", None)
        tiers = Tiers(self._backends, {m.model_name: m.model_info.timeout for m in cfg.model_list},
                      stalls.tier_timeouts(cfg), self._down, self._tiers, self._loads)
        self.core = GatewayCore(cfg, tiers, caps, RouterPort(self._router), self._accounts, self._obs, self._plimits)
        self._metrics_master = configured_master_key(cfg)  # per-key series on /metrics: this key only
        self._models_payload = dumps(self.core.catalog.model_list(cfg.router.strategy))
        self._batches = self._batch_gateway() if cfg.batches.enabled else None
        self._start_batches()

    def _bind_backends(self, cfg: DokaConfig, model_handles: dict[str, DeploymentHandle],
                       tier_apps: dict[str, dict[str, str]]) -> dict[str, ModelBackend]:
        """A backend adapter per model: the bound handles (the egress serves many models through
        one adapter) and each vLLM tier's own Serve application, reached by name."""
        factories = backend_factories()
        backends: dict[str, ModelBackend] = {}
        shared: dict[int, ModelBackend] = {}
        for name, handle in model_handles.items():
            entry = cfg.model(name)
            factory = factories.get(entry.provider) if entry else None
            if factory is None:
                logger.warning("ingress: no backend adapter for %s (%s); skipping it", name, entry and entry.provider)
                continue
            key = id(handle)  # one adapter per handle: the egress serves many models
            backends[name] = shared.setdefault(key, factory(handle)) if entry.provider == "litellm" else factory(handle)
        # the handle resolves lazily, so a tier application that failed or is not there yet is fine
        apps = {n: w for n, w in tier_apps.items() if n not in self._down and n not in model_handles}
        for name, where in apps.items():
            if "vllm" not in factories:
                self._down[name] = "deployments.vllm is not importable in the ingress"
                continue
            backends[name] = factories["vllm"](
                serve.get_deployment_handle(where["deployment"], where["app"], _check_exists=False))
        self._tiers = TierWatch({n: w["app"] for n, w in apps.items() if n in backends}, _serve_states)
        return backends

    def _batch_gateway(self) -> Any:
        """The Batch API (batches/): files and batches in the accounts database and fsspec storage."""
        from batches.http import ANONYMOUS, BatchGateway, build_core

        async def principal(request: Request, models: list[str] | None) -> tuple[str, str | None]:
            if isinstance(self._accounts, NoAccounts):
                return ANONYMOUS, None
            p = await self._accounts.batch_principal(request, models)
            return p["key_id"], p["key_hash"]

        async def schema_owner() -> None:  # the accounts core migrates the database it shares with batches
            await self._accounts.accounts.call("ready")

        return BatchGateway(build_core(self.cfg), principal, {m.model_name for m in self.cfg.model_list},
                            None if isinstance(self._accounts, NoAccounts) else schema_owner)

    def _start_batches(self) -> None:
        """Start the batch runner once this replica has an event loop (constructor or health check)."""
        if self._batches is None or getattr(self, "_batch_starter", None) is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        limit = self.cfg.batches.yield_above

        self._batch_starter = asyncio.ensure_future(self._batches.run_when_ready(
            lambda: self._batches.core.start(self._serve_line, lambda: self.core.interactive > limit)))

    async def check_health(self) -> None:
        """Serve's periodic health check; also starts the batch runner if the constructor could not."""
        self._start_batches()

    async def _serve_line(self, call: Any) -> tuple[int, dict]:
        """One batch line through the core, as an already-authenticated request of the batch's key
        (batches.http.LineRequest): (status, response body or OpenAI error body)."""
        from batches.http import LineRequest

        schema = {"chat": ChatCompletionRequest, "completion": CompletionRequest, "embedding": EmbeddingRequest}[call.kind]
        try:
            resp = await self._serve(LineRequest(call, "/v1/batches"), call.kind, schema, call.body)  # type: ignore[arg-type]
            return resp.status_code, loads(resp.body)
        except OpenAIError as e:
            return e.status, e.body()

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """The router user_config, when the router runs in this replica (`router.placement:
        ingress`): a new artifact loads in the background and swaps in place, as on the Router
        deployment; with `placement: deployment` the ingress has no user_config to apply."""
        if isinstance(self._router, InProcessRouter):
            await self._router.reconfigure(user_config)

    async def __del__(self) -> None:
        """Graceful shutdown: finish ledger settlements still in flight (Serve bounds the wait).

        Serve stops an app's deployments in no particular order, so a draining ingress may find
        the accounts replica replaced; the settle then waits for the new one instead of being lost.
        """
        if getattr(self, "_batches", None) is not None:  # in-flight lines finish and are recorded
            starter = getattr(self, "_batch_starter", None)
            if starter is not None and not starter.done():
                starter.cancel()  # still waiting for the database: nothing runs yet
            await self._batches.core.stop(self.cfg.deployments.ingress.graceful_shutdown_timeout_s / 2)
        pending = self.core.pending() if getattr(self, "core", None) is not None else []
        if pending:
            logger.info("ingress: waiting for %d ledger settlements before exiting", len(pending))
            await asyncio.wait(pending, timeout=self.cfg.deployments.ingress.graceful_shutdown_timeout_s)
        if getattr(self, "_egress", None) is not None:
            await self._egress.close()
        if getattr(self, "_load_poller", None) is not None:
            await self._load_poller.stop()
        parent = getattr(super(), "__del__", None)  # Serve's ASGI wrapper: the app's lifespan shutdown
        if parent is not None:
            await parent()

    # ------------------------------------------------------------------ model endpoints (app/request/)
    @app.post("/v1/chat/completions")
    @app.post("/chat/completions", include_in_schema=False)
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, "chat", ChatCompletionRequest)

    @app.post("/v1/completions")
    @app.post("/completions", include_in_schema=False)
    async def completions(self, request: Request) -> Response:
        return await self._serve(request, "completion", CompletionRequest)

    @app.post("/v1/embeddings")
    @app.post("/embeddings", include_in_schema=False)
    async def embeddings(self, request: Request) -> Response:
        """OpenAI embeddings (float or base64) from an embedding model (`model_info.mode: embedding`)."""
        return await self._serve(request, "embedding", EmbeddingRequest)

    @app.post("/v1/messages")
    async def messages(self, request: Request) -> Response:
        """Anthropic's Messages API (Anthropic SDK, Claude Code) on any backend, errors in Anthropic's shape.

        The request becomes an OpenAI chat body (app/anthropic_api.py) and takes the chat path
        (keys, quotas, routing, fallbacks, ledger); the answer or stream is written back as
        Anthropic's message / SSE events.
        """
        raw = await self._read_json(request)
        req = anthropic_api.validate(anthropic_api.MessagesRequest, raw)  # refuses unknown fields (Anthropic's shape)
        body = anthropic_api.to_chat(req)
        dialect = anthropic_api.MessagesDialect(req.model, prompt_tokens(body))
        return await self._serve(request, "chat", ChatCompletionRequest, body, dialect)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(self, request: Request) -> Response:
        """Anthropic's token count (doka's estimate); needs a valid key, leaves a ledger row."""
        return await self.core.count_tokens(request)

    @app.post("/v1/responses")
    @app.post("/responses", include_in_schema=False)
    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API (text, function tools, streaming) on any backend; stateless.

        `previous_response_id` is refused (400): doka stores no responses.
        """
        raw = await self._read_json(request)
        req = validate_body(responses_api.ResponsesRequest, raw, deepest=True)
        refuse_unknown("responses", raw)  # the chat body it becomes is checked again by the core
        builder = responses_api.ResponseBuilder(req)
        return await self._serve(request, "chat", ChatCompletionRequest, responses_api.to_chat(req), builder)

    async def _serve(self, request: Request, kind: str, schema: type, body: dict | None = None,
                     dialect: Any = None) -> Response:
        self._load_poller.ensure_started()  # no-op once running (the constructor may have had no loop)
        return await self.core.serve(request, kind, schema, body, dialect)

    async def _read_json(self, request: Request) -> Any:
        return await read_json(request, self.cfg.server.max_body_bytes)

    # ------------------------------------------------------------------ Batch API (batches/)
    @app.post("/v1/files")
    async def files_upload(self, request: Request) -> Response:
        """Upload a JSONL batch input file (multipart: `file`, `purpose=batch`)."""
        return await self._batch_api().upload(request)

    @app.get("/v1/files")
    async def files_list(self, request: Request) -> Response:
        return await self._batch_api().list_files(request)

    @app.get("/v1/files/{file_id}")
    async def files_get(self, request: Request, file_id: str) -> Response:
        return await self._batch_api().get_file(request, file_id)

    @app.get("/v1/files/{file_id}/content")
    async def files_content(self, request: Request, file_id: str) -> Response:
        return await self._batch_api().content(request, file_id)

    @app.delete("/v1/files/{file_id}")
    async def files_delete(self, request: Request, file_id: str) -> Response:
        return await self._batch_api().delete_file(request, file_id)

    @app.post("/v1/batches")
    async def batches_create(self, request: Request) -> Response:
        """Create a batch from an uploaded file; its lines run in the background (batches/core.py)."""
        return await self._batch_api().create(request, await self._read_json(request))

    @app.get("/v1/batches")
    async def batches_list(self, request: Request) -> Response:
        return await self._batch_api().list_batches(request)

    @app.get("/v1/batches/{batch_id}")
    async def batches_get(self, request: Request, batch_id: str) -> Response:
        return await self._batch_api().retrieve(request, batch_id)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def batches_cancel(self, request: Request, batch_id: str) -> Response:
        return await self._batch_api().cancel(request, batch_id)

    def _batch_api(self) -> Any:
        if self._batches is None:
            raise OpenAIError(404, "the Batch API is off on this gateway (batches.enabled: false)", code="not_found")
        self._start_batches()
        return self._batches

    @app.get("/v1/models")
    @app.get("/models", include_in_schema=False)
    async def models(self) -> Response:
        return Response(self._models_payload, media_type="application/json")

    @app.get("/v1/models/{model_id:path}")
    async def model_info(self, model_id: str) -> Response:
        for m in loads(self._models_payload)["data"]:
            if m["id"] == model_id:
                return JSONResponse(m)
        raise unknown_model(model_id, self.core.catalog.public)

    @app.get("/health/liveliness")
    @app.get("/health/liveness", include_in_schema=False)
    async def liveliness(self) -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/health/readiness")
    async def readiness(self) -> Response:
        """200 while requests can be answered; a degraded router (fallback strategy) stays 200.

        `auto` still works in degraded mode (the static fallback answers), so taking the gateway
        out of rotation would turn a routing-quality problem into an outage; the body says
        `"status": "degraded"` with the router's reason instead, and doka_router_degraded is 1.
        """
        self._load_poller.ensure_started()
        checks: dict[str, str] = {}
        router: dict[str, Any] | None = None
        try:
            router = await asyncio.wait_for(self.core.router.status(), 5)
            checks["router"] = "degraded" if router.get("degraded") else "ok"
            self._obs.metrics.set_router_state(degraded=bool(router.get("degraded")),
                                               artifact_version=router.get("artifact_version"))
        except Exception as e:  # readiness reports, it does not raise
            checks["router"] = f"error: {type(e).__name__}"
        # a tier that could not start, or whose Serve application is not running: the others serve,
        # so degraded, not unavailable
        down = await self.core.tiers.all_down()
        if down:
            checks["models"] = "degraded"
        failed = [k for k, v in checks.items() if v not in ("ok", "degraded")]
        status = "unavailable" if failed else ("degraded" if "degraded" in checks.values() else "ok")
        load = self._loads.snapshot()  # local tiers' queues (a full one is skipped, not a failure)
        body = {"status": status, "checks": checks, "router": router, "models": sorted(self._backends),
                **({"down": down} if down else {}), **({"load": load} if load else {})}
        return JSONResponse(body, status_code=503 if failed else 200)

    @app.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        """Prometheus: the gateway series to anyone; the per-key ones (doka_key_*) with the master key.

        A wrong key is a 401 (a scraper misconfigured with a bad token should notice), not a
        silently shorter page."""
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        tenant = metrics_caller_is_master(request.headers, self._metrics_master)
        self._load_poller.ensure_started()
        if self._plimits is not None:  # doka_provider_limit_remaining: the core's counts, now
            await self._plimits.export_metrics()
        tier_load.export_metrics(self._loads)  # doka_tier_queue_*: the latest polled readings
        doka_metrics, _ = self._obs.metrics_body(tenant=tenant)  # doka_* gateway metrics + the process defaults
        return Response(doka_metrics + generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/feedback")
    async def feedback(self, request: Request) -> Response:
        """Score an earlier answer by its request id; stored beside the traces for retraining.

        Needs only a valid key that made that request (the master key may score any): no model
        allow-list, quota or rpm applies, since feedback calls no model.
        """
        body = await self._read_json(request)
        key_id = None
        if not isinstance(self._accounts, NoAccounts):
            rid = body.get("request_id") if isinstance(body, dict) else None
            if not isinstance(rid, str) or not rid:
                raise bad_request("Missing required parameter: 'request_id'", param="request_id",
                                  code="missing_required_parameter")
            key_id = (await self._accounts.feedback_principal(request, rid)).key_id
        status, payload = self._obs.add_feedback(body, key_id=key_id)
        return JSONResponse(payload, status_code=status)
