"""The ingress: a thin Serve shell around the gateway core (app/request/).

It owns what needs Ray: the FastAPI routes on Serve, the handles to the backends (the egress
and each vLLM tier's application), the router (in this replica or its deployment), the
accounts handle, Serve's application status for tier health, and the replica's lifecycle
(reconfigure, graceful drain, the batch runner). Each model endpoint hands its request to
`GatewayCore.serve`, which does the rest without Ray: read the request path in app/request/.
The FastAPI app, OpenAPI spec and error handlers are in deployments/http_app.py, the Batch API
routes in deployments/batch_routes.py.

`/v1/messages` and `/v1/responses` translate to an OpenAI chat body first (app/anthropic_api.py,
app/responses_api.py) and pass a dialect that writes the answer and the stream in their format.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import Request
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.responses import JSONResponse, Response

from accounts.actor import master_key as configured_master_key
from accounts.estimate import prompt_tokens
from app import anthropic_api, capabilities, responses_api
from app.config import ConfigError, DokaConfig, parse_config
from app.errors import bad_request, unknown_model
from app.placement import egress_homes, router_home
from app.request.core import GatewayCore
from app.request.http import read_json
from app.request.ledger import NoAccounts
from app.request.respond import dumps, loads
from app.request.tiers import Tiers
from app.request_params import refuse_unknown
from app.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, validate_body
from deployments import stalls, tier_load
from deployments.backends import ModelBackend, backend_factories
from deployments.batch_routes import BatchRoutes
from deployments.egress import EgressService
from deployments.http_app import app, metrics_caller_is_master
from deployments.router import InProcessRouter
from deployments.tier_apps import AppState, TierWatch, states_from_serve_status
from observability.gateway import Observability

logger = logging.getLogger("ray.serve")

__all__ = ["Ingress", "RouterPort", "app", "load_accounts", "NoAccounts"]


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
class Ingress(BatchRoutes):
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

    async def check_health(self) -> None:
        """Serve's periodic health check; also starts the batch runner if the constructor could not."""
        self._start_batches()

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
        await self._stop_batches()  # in-flight batch lines finish and are recorded
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
