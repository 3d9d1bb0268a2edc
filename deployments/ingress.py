"""The ingress: the HTTP surface (OpenAI chat, completions, embeddings and Responses; Anthropic
Messages) and the fallback-chain orchestration.

Every model endpoint goes through `_serve`: `/v1/messages` and `/v1/responses` translate to an
OpenAI chat body first (app/anthropic_api.py, app/responses_api.py) and hand `_serve` a dialect
that writes the answer and the stream back in their own format.

Hot path, explicit model: read + validate the body here, then the model's backend: the egress
in this replica for external providers (`egress.placement: ingress`, the default: no Serve
hop), else one handle call to the Egress or a vLLM deployment. `auto` adds one router
decision: in this replica by default (`router.placement: ingress`), else one call to the Router
deployment. Each tier of a chain gets its own `model_info.timeout`; a failed or timed-out tier
moves on to the next. A stream may fall back only until its first chunk was sent (a tier that
misses its `first_token_timeout_s` is left too); after that a failure, or a gap past the tier's
`stream_idle_timeout_s`, ends it with an OpenAI error event (deployments/stalls.py).

Seams for other parts (kept in one place each):
  * accounts: `self._accounts.authorize(...)` before the call, `settle(...)` after it
    (`NoAccounts` when `accounts.require_keys` is false or no accounts deployment is bound);
  * backends: `deployments/backends.py` (adapter per provider, keyed by model name).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import uuid
from functools import partial
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from accounts import provider_gate
from accounts.estimate import charged_usage, prompt_tokens
from app import anthropic_api, capabilities, responses_api
from app.config import ConfigError, DokaConfig, parse_config
from app.errors import (OpenAIError, UpstreamError, bad_request, body_too_large, is_client_error_status,
                        model_not_allowed, provider_limit_exceeded, tier_unavailable, unknown_model,
                        upstream_exhausted)
from app.placement import egress_homes, router_home
from app.request_params import refuse_unknown
from app.schemas import (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, check_params, prompt_text,
                         validate_body)
from deployments.backends import ModelBackend, backend_factories
from deployments.cascade import agree, replay
from deployments.egress import EgressService
from deployments import stalls, tier_load
from deployments.tier_apps import AppState, TierWatch, states_from_serve_status
from deployments.router import InProcessRouter
from router.decision import RouteDecision
from observability.gateway import Observability

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


def request_id_of(request: Request) -> str:
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


class OpenAIDialect:
    """How chat/completions streams are written: chunks as `data:` events, then `[DONE]`.

    Other endpoints (`/v1/messages`, `/v1/responses`) pass their own translator with the same
    four methods; it sees the OpenAI-shaped answer or chunks the backends produce.
    """

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


class NoAccounts:
    """The accounts seam when keys are off: admits everyone, records nothing."""

    async def authorize(self, request: Request, model: str, body: dict[str, Any], request_id: str,
                        calls: int = 1) -> Any:
        return None

    async def settle(self, grant: Any, **outcome: Any) -> None:
        return None


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


def _ask_usage(body: dict[str, Any]) -> bool:
    """Make a chat/completions stream ask its provider for usage; True when the client had not.

    Every token is then charged from the provider's own count (tool-call arguments and reasoning
    included); counting delivered characters is left for a stream cut off before the usage came.
    """
    opts = body.get("stream_options")
    opts = opts if isinstance(opts, dict) else {}
    body["stream_options"] = {**opts, "include_usage": True}
    return not opts.get("include_usage")


def _without_usage(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The chunk as a client that did not ask for usage gets it: None for a usage-only chunk."""
    if "usage" not in chunk:
        return chunk
    if not chunk.get("choices"):
        return None
    return {k: v for k, v in chunk.items() if k != "usage"}

def metrics_caller_is_master(headers: Any, master: str | None) -> bool:
    """True for the master key (Bearer or x-api-key), False with no key; 401 for any other key."""
    given = api_key_from_headers(headers)
    if not given:
        return False
    if master and hmac.compare_digest(given.encode(), master.encode()):
        return True
    raise OpenAIError(401, "per-key metrics need the master key; scrape /metrics without a key for the "
                      "gateway series", type="authentication_error", code="invalid_master_key")


def _unwrap(e: BaseException) -> BaseException:
    """Ray wraps a deployment's exception; get the original (an UpstreamError, usually)."""
    return getattr(e, "cause", None) or e


def routing_options(header_weight: str | None, ext: Any, allowed: list[str]) -> tuple[float | None, list[str]]:
    """Per-request routing options: cost weight and candidate restriction.

    Cost weight: header `x-doka-cost-weight`, else body `{"doka": {"cost_weight": w}}`; a
    number >= 0 (None = the router's default). Candidates: `{"doka": {"candidates": [...]}}`,
    a subset of the `auto` candidates. Anything else is a 400 naming the bad field.
    """
    weight: Any = header_weight
    param = "x-doka-cost-weight"
    candidates = list(allowed)
    if ext is not None:
        if not isinstance(ext, dict):
            raise bad_request("'doka' must be an object like {\"cost_weight\": 0.2, \"candidates\": [...]}",
                              param="doka")
        unknown = sorted(set(ext) - {"cost_weight", "candidates"})
        if unknown:
            raise bad_request(f"Unknown field(s) in 'doka': {unknown}; known: cost_weight, candidates", param="doka")
        if weight is None and ext.get("cost_weight") is not None:
            weight, param = ext["cost_weight"], "doka.cost_weight"
        if ext.get("candidates") is not None:
            wanted = ext["candidates"]
            if not isinstance(wanted, list) or not wanted or not all(isinstance(c, str) for c in wanted):
                raise bad_request("'doka.candidates' must be a non-empty list of model names", param="doka.candidates")
            bad = [c for c in wanted if c not in allowed]
            if bad:
                raise bad_request(f"'doka.candidates' names models that are not auto candidates: {bad}; "
                                  f"choose from {allowed}", param="doka.candidates", code="invalid_candidates")
            candidates = list(dict.fromkeys(wanted))
    if weight is None:
        return None, candidates
    try:
        if isinstance(weight, bool):
            raise ValueError
        value = float(weight)
    except (TypeError, ValueError):
        raise bad_request(f"{param} must be a number >= 0", param=param, code="invalid_cost_weight") from None
    if not math.isfinite(value) or value < 0:
        raise bad_request(f"{param} must be a finite number >= 0, got {weight!r}", param=param,
                          code="invalid_cost_weight")
    return value, candidates


class _Attempt:
    """What a chain run produced: the answer (or open stream), who answered, and why.

    `side`: (model, usage) of the other calls made for this answer (a cascade's weak and
    verifier), charged with it. `usage`: a stream's usage when known before it starts (a
    replayed answer), so the ledger has it even if the client asked for none or left early."""

    __slots__ = ("result", "model", "reason", "tried", "side", "usage", "hold")

    def __init__(self, result: Any, model: str, reason: str, tried: list[str],
                 side: list[tuple[str, dict]] | None = None, usage: dict | None = None,
                 hold: str | None = None) -> None:
        self.result, self.model, self.reason, self.tried = result, model, reason, tried
        self.side = side if side is not None else []
        self.usage = usage
        self.hold = hold  # a stream's provider-limit hold (accounts.provider_gate), settled with it


class _EarlyRoute:
    """A router call sent before the request was authorized (see `Ingress._route_early`)."""

    __slots__ = ("response", "cost_weight", "candidates", "started", "offered")

    def __init__(self, response: Any, cost_weight: float | None, candidates: list[str],
                 offered: list[str] | None = None) -> None:
        self.response, self.cost_weight, self.candidates = response, cost_weight, candidates
        self.offered = offered if offered is not None else candidates  # before the capability filter
        self.started = time.perf_counter()

    def cancel(self) -> None:
        """Drop the call if nobody will read it (no-op once it has answered)."""
        try:
            self.response.cancel()
        except Exception:  # already finished or never assigned: nothing to stop
            pass


class _Once:
    """Who settles a stream: the first to `claim()` it (its generator or its response)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def claim(self) -> bool:
        first, self.done = not self.done, True
        return first


class _SettlingStream(StreamingResponse):
    """A StreamingResponse that calls `on_close()` however it ends.

    Starlette may never start the body generator (client gone before the headers went out),
    and a generator never started runs no `finally`: this is where such a stream is settled.
    """

    def __init__(self, content: Any, on_close: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _rename_model(result: Any, name: str) -> str | None:
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


async def _serve_states() -> dict[str, AppState]:
    """The Serve applications' states (TierWatch's fetch): `serve.status()` off the event loop."""
    return states_from_serve_status(await asyncio.to_thread(serve.status))


def _settled(pending: set, request_id: str, task: asyncio.Task) -> None:
    """Done callback of a settle task: forget it, log a failure (the answer was already sent)."""
    pending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("ingress: settle failed for %s", request_id, exc_info=task.exception())


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
        self._caps = model_capabilities if model_capabilities is not None else capabilities.resolve_all(
            cfg, lambda model: None)
        self._down = dict(down_tiers or {})  # tiers app/graph.py left out at start, and why
        factories = backend_factories()
        self._backends: dict[str, ModelBackend] = {}
        shared: dict[int, ModelBackend] = {}
        for name, handle in model_handles.items():
            entry = cfg.model(name)
            factory = factories.get(entry.provider) if entry else None
            if factory is None:
                logger.warning("ingress: no backend adapter for %s (%s); skipping it", name, entry and entry.provider)
                continue
            key = id(handle)  # one adapter per handle: the egress serves many models
            self._backends[name] = shared.setdefault(key, factory(handle)) if entry.provider == "litellm" else factory(handle)
        # vLLM tiers: each its own Serve application (deployments/tier_apps.py), reached by name;
        # the handle resolves lazily, so a tier application that failed or is not there yet is fine
        tier_apps = {n: w for n, w in (tier_apps or {}).items() if n not in self._down and n not in model_handles}
        for name, where in tier_apps.items():
            if "vllm" not in factories:
                self._down[name] = "deployments.vllm is not importable in the ingress"
                continue
            self._backends[name] = factories["vllm"](
                serve.get_deployment_handle(where["deployment"], where["app"], _check_exists=False))
        self._tiers = TierWatch({n: w["app"] for n, w in tier_apps.items() if n in self._backends}, _serve_states)
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
        self._timeouts = {m.model_name: m.model_info.timeout for m in cfg.model_list}
        self._stalls = stalls.tier_timeouts(cfg)  # first-token and idle timeouts of streams
        # `router.placement: ingress` (no handle bound): the router runs in this replica
        self._router = router if router_home(cfg) == "Router" else InProcessRouter(config)
        self._accounts = load_accounts(cfg, accounts)
        # provider limits (accounts.provider_gate): None when no model has `model_info.limits`
        self._plimits = getattr(self._accounts, "providers", None)
        self._metrics_master = configured_master_key(cfg)  # per-key series on /metrics: this key only
        self._auto = cfg.server.auto_model
        self._max_body = cfg.server.max_body_bytes
        self._candidates = [m for m in cfg.auto_candidates() if m in self._backends]
        self._cascades = {n: c for n, c in cfg.cascades.items()
                          if {c.weak, c.verifier, c.strong} <= set(self._backends)}
        # `router.novel_cascade`: auto prompts a gated artifact calls novel go through this cascade
        self._novel = cfg.router.novel_cascade if cfg.router.novel_cascade in self._cascades else None
        # a tier left out at start stays a known name: asked by name, it falls back along its chain
        self._public = [n for n in cfg.public_names() if n == self._auto or n in cfg.fallbacks
                        or n in self._backends or n in self._cascades or n in self._down]
        self._public_set = set(self._public)
        self._mode_of = {n: self.cfg.model(self.cfg.chain_for(n)[0]).model_info.mode  # type: ignore[union-attr]
                         for n in self._public if n != self._auto}
        self._models_payload = dumps(self._model_list())
        self._client_params = self._client_params_by_name()
        self._settling: set[asyncio.Task] = set()  # ledger settlements still running
        self._interactive = 0  # client requests in `_serve` now (the batch runner yields above a threshold)
        self._batches = self._batch_gateway() if cfg.batches.enabled else None
        self._start_batches()

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
            lambda: self._batches.core.start(self._serve_line, lambda: self._interactive > limit)))

    async def check_health(self) -> None:
        """Serve's periodic health check; also starts the batch runner if the constructor could not."""
        self._start_batches()

    async def _serve_line(self, call: Any) -> tuple[int, dict]:
        """One batch line through `_serve`, as an already-authenticated request of the batch's key
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
        pending = [t for t in getattr(self, "_settling", ()) if not t.done()]
        if getattr(self, "_plimits", None) is not None:
            pending += self._plimits.pending()
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

    # ------------------------------------------------------------------ endpoints
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
        """Anthropic's token count (doka's estimate: ~4 characters a token, as the accounts reserve).

        Needs a valid key like any model call and leaves a ledger row with no tokens charged.
        """
        started = time.perf_counter()
        request_id = request_id_of(request)
        req = anthropic_api.validate(anthropic_api.CountTokensRequest, await self._read_json(request))
        if req.model not in self._public_set:
            raise unknown_model(req.model, self._public)
        body = {"model": req.model, "messages": anthropic_api.chat_messages(req), "max_tokens": 1}
        grant = await self._accounts.authorize(request, req.model, body, request_id)
        await self._settle(grant, request_id, req.model, None, None, 200, started, "count_tokens", False)
        return JSONResponse({"input_tokens": prompt_tokens(body)}, headers={"x-doka-request-id": request_id})

    @app.post("/v1/responses")
    @app.post("/responses", include_in_schema=False)
    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API (text, function tools, streaming) on any backend; stateless.

        `previous_response_id` is refused (400): doka stores no responses.
        """
        raw = await self._read_json(request)
        req = validate_body(responses_api.ResponsesRequest, raw, deepest=True)
        refuse_unknown("responses", raw)  # the chat body it becomes is checked again by `_serve`
        builder = responses_api.ResponseBuilder(req)
        return await self._serve(request, "chat", ChatCompletionRequest, responses_api.to_chat(req), builder)

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
        raise unknown_model(model_id, self._public)

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
            router = await asyncio.wait_for(self._router.status.remote(), 5)
            checks["router"] = "degraded" if router.get("degraded") else "ok"
            self._obs.metrics.set_router_state(degraded=bool(router.get("degraded")),
                                               artifact_version=router.get("artifact_version"))
        except Exception as e:  # readiness reports, it does not raise
            checks["router"] = f"error: {type(e).__name__}"
        # a tier that could not start, or whose Serve application is not running: the others serve,
        # so degraded, not unavailable
        down = {**await self._tiers.refresh(), **self._down}
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

    # ------------------------------------------------------------------ request path
    async def _serve(self, request: Request, kind: str, schema: type, body: dict | None = None,
                     dialect: Any = None) -> Response:
        """`_serve_request`, counting the client requests in flight (the batch runner yields to them)."""
        if getattr(request, "batch_line", None) is not None:
            return await self._serve_request(request, kind, schema, body, dialect)
        self._interactive += 1
        try:
            return await self._serve_request(request, kind, schema, body, dialect)
        finally:
            self._interactive -= 1

    async def _serve_request(self, request: Request, kind: str, schema: type, body: dict | None = None,
                             dialect: Any = None) -> Response:
        """The request path of every model endpoint: validate, authorize, plan, call, settle.

        `body`: an OpenAI chat/completion body already translated by another endpoint (used
        instead of reading the request's; the request still gives headers, key, disconnects).
        `dialect`: writes the answer and stream for that endpoint (default: OpenAI's as-is).
        `kind`: chat, completion or embedding (the backend method called).
        Every way out after `authorize` (answer, error, client cancel) settles the reservation
        exactly once; a stream hands that duty to its response (`_SettlingStream`).
        """
        started = time.perf_counter()
        self._load_poller.ensure_started()  # no-op once running (the constructor may have had no loop)
        request_id = request_id_of(request)
        if body is None:
            body = await self._read_json(request)
        req = validate_body(schema, body)
        routing_ext = body.pop("doka", None)  # doka's own request extension: never sent upstream
        requested = req.model
        if requested not in self._public_set:
            raise unknown_model(requested, self._public)
        if self._mode_of.get(requested, "chat") != ("embedding" if kind == "embedding" else "chat"):
            raise self._wrong_mode(requested, kind)
        # only the endpoint's OpenAI parameters (and what the operator allowed) may reach a provider
        check_params(kind, schema, body, self._client_params.get(requested, ()))
        stream = bool(getattr(req, "stream", False))
        strip_usage = stream and kind != "embedding" and _ask_usage(body)
        prompt = prompt_text(body)  # once per request: routing and the trace store share it
        needs = capabilities.needs_of(body) if kind == "chat" else capabilities.Needs()
        early = self._route_early(requested, request, routing_ext, prompt, needs)
        cascading = requested in self._cascades or (requested == self._auto and self._novel is not None)
        try:  # a cascade may call three models: hold enough for all of them
            grant = await self._accounts.authorize(request, requested, body, request_id, calls=3 if cascading else 1)
        except BaseException:
            if early is not None:
                early.cancel()
            raise
        self._obs.start(request_id, requested, body, key_id=getattr(grant, "key_id", None), stream=stream,
                        prompt=prompt)
        status = 500
        side: list[tuple[str, dict]] = []  # calls made besides the answering one (a cascade's)
        try:
            chain, base_reason, decision = await self._plan(requested, body, request, routing_ext, prompt,
                                                            getattr(grant, "models", None), early, needs)
            if requested in self._cascades:
                att = await self._run_cascade(kind, body, requested, chain, stream, side, needs=needs)
            elif decision is not None and decision.cascade:  # a novel prompt (`router.novel_cascade`)
                att = await self._run_cascade(kind, body, decision.cascade, chain, stream, side, "auto:novel:",
                                              needs)
            else:
                att = await self._run_chain(kind, body, chain, base_reason, stream=stream)
        except OpenAIError as e:
            status = e.status
            e.headers.setdefault("x-doka-request-id", request_id)
            raise
        except asyncio.CancelledError:  # client gone (disconnect, timeout): Serve cancelled us
            status = 499
            raise
        except BaseException:
            status = 500
            raise
        else:
            status = 200
        finally:
            if early is not None:
                early.cancel()  # no-op once _plan has its decision
            if status != 200:
                self._start_settle(grant, request_id, requested, None, None, status, started, None, stream, side)
        if stream:
            return self._serve_stream(att, requested, decision, request_id, grant, started, dialect or OpenAIDialect,
                                      strip_usage)
        await self._settle(grant, request_id, requested, att.model, att.result.get("usage"), 200, started,
                           att.reason, False, att.side)
        headers = self._headers(att, request_id, decision)
        upstream_model = _rename_model(att.result, att.model)
        if upstream_model:
            headers["x-doka-upstream-model"] = upstream_model
        result = att.result if dialect is None else dialect.answer(att.result)
        return Response(dumps(result), media_type="application/json", headers=headers)

    def _client_params_by_name(self) -> dict[str, frozenset[str]]:
        """Per public name, the extra body parameters an operator allowed (`model_info.
        allow_client_params`) on any model that name can reach; the egress passes each model
        only its own, so a fallback tier never gets what its operator did not allow."""
        out: dict[str, frozenset[str]] = {}
        for name in self._public:
            reach = set(self._candidates) if name == self._auto else set(self.cfg.chain_for(name))
            if name == self._auto:
                for c in self._candidates:
                    reach.update(self.cfg.chain_for(c))
            if name in self._cascades:
                reach.update((self._cascades[name].weak, self._cascades[name].verifier))
            names = {p for m in reach if (e := self.cfg.model(m)) is not None for p in e.model_info.allow_client_params}
            if names:
                out[name] = frozenset(names)
        return out

    def _wrong_mode(self, requested: str, kind: str) -> OpenAIError:
        """A 400 for a chat request to an embedding model, or an embedding request to a chat model."""
        embedders = sorted(n for n, m in self._mode_of.items() if m == "embedding")
        if kind == "embedding":
            what = "routes chat requests only" if requested == self._auto else "is a chat model"
            return bad_request(f"{requested!r} {what}; /v1/embeddings needs an embedding model: "
                               f"{', '.join(embedders) or 'none configured'}", param="model", code="model_not_supported")
        return bad_request(f"{requested!r} is an embedding model; call it on /v1/embeddings, or name a chat model",
                           param="model", code="model_not_supported")

    async def _read_json(self, request: Request) -> Any:
        """The body as JSON, refusing more than `server.max_body_bytes` (header or streamed)."""
        limit = self._max_body
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

    def _route_early(self, requested: str, request: Request, ext: Any, prompt: str,
                     needs: capabilities.Needs | None = None) -> "_EarlyRoute | None":
        """`auto`: send the router call before authorization, so the two hops overlap.

        Bad routing options start nothing here: `_plan` raises them once the request is
        authorized, so the refusal has its ledger row. A key whose allow-list excludes some
        candidate gets a fresh decision among its own models in `_plan`.
        """
        if requested != self._auto or not self._candidates:
            return None
        try:
            cost_weight, candidates = routing_options(request.headers.get("x-doka-cost-weight"), ext, self._candidates)
        except OpenAIError:
            return None
        offered = candidates
        if needs is not None:
            candidates, _ = capabilities.split(candidates, self._caps, needs)
            if not candidates:  # `_plan` refuses it, with the reason
                return None
        candidates, _ = self._loads.split(candidates)  # as `_plan` does: no full local tier
        return _EarlyRoute(self._router.route.remote(prompt, cost_weight, candidates), cost_weight, candidates,
                           offered)

    async def _plan(self, requested: str, body: dict[str, Any], request: Request, ext: Any = None,
                    prompt: str | None = None, allowed: list[str] | None = None,
                    early: "_EarlyRoute | None" = None,
                    needs: capabilities.Needs | None = None) -> tuple[list[str], str, RouteDecision | None]:
        """The ordered tiers to try, the base route reason and the router's decision (auto).

        `allowed`: the key's model allow-list (empty/None: every model). Only allowed models are
        ever called: the router chooses among allowed candidates, and chain tiers outside the
        list are skipped; nothing left is a 403. `early`: the router call `_route_early` sent.
        `needs`: what the request needs (tools, images, JSON output, context): candidates and
        tiers that cannot serve it are left out and named in the route reason; none left is a 400.
        """
        needs = needs or capabilities.Needs()
        permitted = set(allowed) if allowed else None
        cascade = self._cascades.get(requested)
        if cascade is not None and permitted is not None:
            missing = sorted({cascade.weak, cascade.verifier} - permitted)
            if missing:  # the answer comes from agreement of the two: both must be callable
                raise model_not_allowed(f"cascade {requested!r} calls {', '.join(missing)}, which this key may not use",
                                        permitted)
        if requested != self._auto:
            reason = f"chain:{requested}" if requested in self.cfg.fallbacks else "explicit"
            chain = self._allowed_chain(self.cfg.chain_for(requested), permitted, requested)
            chain, dropped = self._capable(chain, needs, requested)
            return chain, reason + (f";filtered={capabilities.describe(dropped)}" if dropped else ""), None
        if not self._candidates:
            raise OpenAIError(503, "No model is available for automatic routing", code="no_candidates")
        if early is not None:  # its options were parsed (and valid) when it was sent
            cost_weight, candidates = early.cost_weight, early.offered
        else:
            cost_weight, candidates = routing_options(request.headers.get("x-doka-cost-weight"), ext, self._candidates)
        if permitted is not None:
            candidates = [c for c in candidates if c in permitted]
            if not candidates:
                raise model_not_allowed(f"this key may use none of the {self._auto!r} candidates", permitted)
        candidates, filtered = self._capable(candidates, needs, self._auto)
        candidates, used_up = await self._open(candidates)
        candidates, tiers_down = await self._serving(candidates)
        candidates, full = self._loads.split(candidates)  # local tiers whose queue is at its limit
        if early is not None and early.candidates != candidates:
            early.cancel()  # the allow-list narrowed the candidates: decide among the key's own
            early = None
        with self._obs.routing(candidates, early.started if early is not None else None) as routing:
            try:
                if early is not None:
                    decision = await early.response
                else:
                    decision = await self._router.route.remote(prompt_text(body) if prompt is None else prompt,
                                                               cost_weight, candidates)
            except Exception as e:
                logger.warning("ingress: router failed (%s); using the first candidate", e)
                decision = RouteDecision(candidates[0], "router_unavailable", None, f"router error: {type(e).__name__}")
            novel = self._novel_chain(permitted) if decision.familiar is False and self._novel else []
            novel = capabilities.split(novel, self._caps, needs)[0] if novel else novel  # tiers able to answer
            if novel:  # the key may call the cascade's weak and verifier and some tier it escalates to
                decision = decision.replace(cascade=self._novel)
            routing.decided(decision)
        note = f";filtered={capabilities.describe(filtered)}" if filtered else ""
        if used_up or tiers_down or full:
            note += ";skipped=" + ",".join([*(f"{m}:provider_limit_{r['limit']}" for m, r in used_up.items()),
                                            *(f"{m}:down" for m in tiers_down),
                                            *(f"{m}:{tier_load.QUEUE_FULL}" for m in full)])
        if filtered:
            decision = decision.replace(reason=f"{decision.reason}; not capable: {capabilities.describe(filtered)}")
        if novel:
            return novel, f"auto:{decision.strategy}{note}", decision
        chain = self._allowed_chain(self.cfg.chain_for(decision.model), permitted, requested)
        chain, _ = self._capable(chain, needs, requested)  # its fallback tiers: the capable ones
        return chain, f"auto:{decision.strategy}{note}", decision

    async def _why_down(self, model: str) -> str | None:
        """Why a tier is not serving now (left out at start, or its Serve application is not
        running), or None: the chain calls it."""
        why = self._down.get(model)
        if why is None and model in self._tiers:  # the other models: no await on the hot path
            why = await self._tiers.check(model)
        return why

    async def _serving(self, candidates: list[str]) -> tuple[list[str], list[str]]:
        """`auto`'s candidates without the tiers that are down (and those); all of them when
        every one is down (the chain then says why, in a 503)."""
        down = [c for c in candidates if await self._why_down(c) is not None]
        kept = [c for c in candidates if c not in down]
        return (kept, down) if kept else (candidates, [])

    async def _open(self, candidates: list[str]) -> tuple[list[str], dict[str, dict]]:
        """`auto`'s candidates without the models whose provider limit is used up (and those,
        with why); a 429 with Retry-After at the soonest reset when none is left."""
        if self._plimits is None:
            return candidates, {}
        used_up = await self._plimits.used_up(candidates)
        if not used_up:
            return candidates, {}
        kept = [c for c in candidates if c not in used_up]
        if not kept:
            raise provider_limit_exceeded(list(used_up.values()), [])
        return kept, used_up

    def _capable(self, models: list[str], needs: capabilities.Needs,
                 requested: str) -> tuple[list[str], dict[str, list[str]]]:
        """`models` that can serve `needs` and why the others cannot; a 400 naming the missing
        capability when none can (before any call: a provider's own 400 would say less)."""
        kept, dropped = capabilities.split(models, self._caps, needs)
        if not kept:
            lacks = sorted({c for v in dropped.values() for c in v})
            raise bad_request(f"No model of {requested!r} can serve this request: it needs {', '.join(lacks)} "
                              f"({capabilities.describe(dropped)} lack it)", param="model",
                              code="model_not_capable")
        return kept, dropped

    def _novel_chain(self, permitted: set[str] | None) -> list[str]:
        """The escalation chain of `router.novel_cascade` that this key may use; empty when the
        key may not call its weak or verifier model or any tier of that chain (the routed model
        answers then: the cascade is an improvement on auto, never a refusal)."""
        spec, chain = self._cascades[self._novel], self.cfg.chain_for(self._novel)  # type: ignore[index]
        if permitted is None:
            return chain
        if not {spec.weak, spec.verifier} <= permitted:
            return []
        return [m for m in chain if m in permitted]

    def _allowed_chain(self, chain: list[str], permitted: set[str] | None, requested: str) -> list[str]:
        """The chain without the tiers the key may not use (403 when none is left)."""
        if permitted is None:
            return chain
        kept = [m for m in chain if m in permitted]
        if not kept:
            raise model_not_allowed(f"this key may use no model of {requested!r} ({', '.join(chain)})", permitted)
        return kept

    async def _run_chain(self, kind: str, body: dict[str, Any], chain: list[str], base_reason: str,
                         stream: bool = False, load_aware: bool = True) -> _Attempt:
        """Try each tier in order with its own timeout; the first answer (or first chunk) wins.

        A local tier whose queue is at its `queue_limit` is skipped while a later tier may answer;
        when none of the others answers, the request queues at the full ones (reason `;queued=`)."""
        _, full = self._loads.split(chain) if load_aware else ([], [])
        queue_skipped: list[str] = []
        tried: list[str] = []
        last_error, timed_out, last_status = "no tier available", False, None
        retry_after: float | None = None  # set while the last failed tier is in its cooldown
        skipped: list[str] = []  # tiers whose provider limit is used up: `model:provider_limit_rpd`
        refusals: list[dict] = []
        missed_first: list[str] = []  # tiers left for their first-token timeout (route reason)
        down: dict[str, str] = {}  # tiers not serving now (deployments/tier_apps.py): skipped, no call
        for i, model in enumerate(chain):
            why = await self._why_down(model)
            if why is not None:
                skipped.append(f"{model}:down")
                down[model] = why
                continue
            backend = self._backends.get(model)
            tier_body = capabilities.for_model(body, self._caps.get(model)) if kind == "chat" else body
            hold: str | None = None
            if model in full:  # its vLLM queue is at the limit: a later tier answers sooner
                skipped.append(f"{model}:{tier_load.QUEUE_FULL}")
                queue_skipped.append(model)
                continue
            if backend is not None and self._plimits is not None and self._plimits.limited(model):
                got = await self._plimits.admit(model, tier_body)
                if isinstance(got, dict):  # used up: the next tier, before any call
                    skipped.append(f"{model}:provider_limit_{got['limit']}")
                    refusals.append(got)
                    continue
                hold = got
            tried.append(model)
            if backend is None:
                last_error, timed_out = f"{model}: not deployed", False
                continue
            timeout = self._timeouts[model]
            reason = (base_reason if i == 0 else stalls.fallback_reason(i + 1, missed_first)) + (
                f";skipped={','.join(skipped)}" if skipped else "")
            used = 0  # tokens the call used, for the provider-limit hold (0: failed, nothing charged)
            try:
                if stream:
                    it = getattr(backend, f"{kind}_stream")(model, tier_body, timeout)
                    it = it.__aiter__()
                    try:
                        first = await stalls.first_chunk(it, model, self._stalls.get(model), timeout)
                    except BaseException:
                        await it.aclose()
                        raise
                    att, hold = _Attempt((first, it), model, reason, tried, hold=hold), None  # the stream settles it
                    return att
                call = getattr(backend, kind)  # chat, completion or embedding
                result = await asyncio.wait_for(call(model, tier_body, timeout), timeout)
                used = provider_gate.tokens_of(result.get("usage") if isinstance(result, dict) else None)
                return _Attempt(result, model, reason, tried)
            except StopAsyncIteration:
                return _Attempt((None, None), model, reason, tried)
            except stalls.FirstTokenTimeout as e:
                last_error, timed_out = str(e), True
                missed_first.append(model)
            except asyncio.TimeoutError:
                last_error, timed_out = f"{model}: no answer within {timeout:g}s", True
            except asyncio.CancelledError:
                raise
            except Exception as e:  # one tier failed: note it, try the next
                err = _unwrap(e)
                if isinstance(err, UpstreamError):
                    if (err.is_client_error and i + 1 < len(chain)
                            and capabilities.is_capability_refusal(err.status, err.message)):
                        # the model cannot do what was asked (no tool parser, too long): the next tier may
                        logger.info("ingress: tier %s refused for a capability reason: %s", model, err.message)
                        last_error, timed_out, last_status = f"{model}: {err.message}", False, err.status
                        continue
                    if err.is_client_error:
                        raise OpenAIError(err.status, err.message, headers={"x-doka-tiers-tried": ",".join(tried)}) from None
                    last_error, timed_out, last_status = f"{model}: {err}", err.timed_out, err.status
                    retry_after = getattr(err, "retry_after", None)
                else:
                    logger.warning("ingress: tier %s failed: %r", model, e)
                    last_error, timed_out, last_status = f"{model}: {type(err).__name__}: {err}", False, None
                    retry_after = None
            finally:  # every call made is counted once: its usage on an answer, 0 on error or cancel
                if hold is not None:
                    self._plimits.settle(hold, used)
            self._router.report.remote(model, False)
        if queue_skipped:  # no other tier answered: wait in the full queue after all
            return await self._run_chain(kind, body, queue_skipped, f"{base_reason};queued="
                                         + ",".join(f"{m}:{tier_load.QUEUE_FULL}" for m in queue_skipped),
                                         stream, load_aware=False)
        if refusals and not tried:  # every tier used up: the client may come back at the reset
            raise provider_limit_exceeded(refusals, tried)
        if down and not tried:  # no tier to call: say which are down and why (Serve's message)
            raise tier_unavailable(down)
        if skipped:
            last_error += f" (skipped: {','.join(skipped)})"
        raise upstream_exhausted(tried, last_error, timed_out, last_status, retry_after)

    async def _run_cascade(self, kind: str, body: dict[str, Any], name: str, chain: list[str], stream: bool,
                           side: list[tuple[str, dict]], reason_prefix: str = "",
                           needs: capabilities.Needs | None = None) -> _Attempt:
        """`cascades.<name>`: ask weak and verifier at once; their agreed answer, else the strong chain's.
        `reason_prefix` goes before the route reason (`auto:novel:` when auto sent a novel prompt here).
        When weak or verifier cannot serve the request (`needs`: tools, images, ...), the check is
        skipped and the strong chain answers (route reason `cascade:incapable=<model>:<need>`).

        Both are asked for a whole answer (a stream is replayed from the weak one once they
        agree). Every call that answered is added to `side`, also when the client leaves, so
        whatever way the request ends charges it; a call still running then is cancelled.
        """
        spec = self._cascades[name]
        _, dropped = capabilities.split([spec.weak, spec.verifier], self._caps, needs or capabilities.Needs())
        if dropped:
            self._obs.metrics.cascade(name, "incapable")
            return await self._run_chain(kind, body, chain,
                                         f"{reason_prefix}cascade:incapable={capabilities.describe(dropped)}",
                                         stream=stream)
        quiet = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        calls = {m: asyncio.ensure_future(self._run_chain(kind, quiet, [m], f"cascade:{name}"))
                 for m in (spec.weak, spec.verifier)}
        answers: dict[str, dict] = {}
        refused: OpenAIError | None = None
        try:
            await asyncio.wait(calls.values())
        finally:  # also when the client left: what answered is charged, the rest is stopped
            for m, call in calls.items():
                if not call.done() or call.cancelled():
                    call.cancel()
                elif call.exception() is None:
                    answers[m] = call.result().result
                    side.append((m, answers[m].get("usage") or {}))
                elif isinstance(err := call.exception(), OpenAIError) and is_client_error_status(err.status):
                    refused = err  # the request itself was refused (`_run_chain`): no tier would take it
        if refused is not None:
            raise refused
        pair = (answers.get(spec.weak), answers.get(spec.verifier), spec.compare)
        # `program` parses both answers (~1.4 ms per 1k characters): off the event loop
        agreed = len(answers) == 2 and (await asyncio.to_thread(agree, *pair) if spec.compare == "program"
                                        else agree(*pair))
        if agreed:
            side[:] = [(m, u) for m, u in side if m != spec.weak]  # the weak call is the answer now
            result = answers[spec.weak]
            if stream:
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                it = replay(result, include_usage).__aiter__()
                result = (await it.__anext__(), it)
            self._obs.metrics.cascade(name, "agreed")
            return _Attempt(result, spec.weak, f"{reason_prefix}cascade:agreed", [spec.weak, spec.verifier], side,
                            answers[spec.weak].get("usage"))
        outcome = "escalated" if len(answers) == 2 else "failed_check"
        self._obs.metrics.cascade(name, outcome)
        reason = f"{reason_prefix}cascade:{outcome}"
        att = await self._run_chain(kind, body, chain, reason, stream=stream)
        att.tried = [spec.weak, spec.verifier, *att.tried]
        att.side = side
        return att

    def _serve_stream(self, att: _Attempt, requested: str, decision: RouteDecision | None, request_id: str, grant: Any,
                      started: float, dialect: Any = OpenAIDialect, strip_usage: bool = False) -> Response:
        """The open stream as an SSE response; from here on the response settles the request.

        `strip_usage`: the client did not ask for the usage chunk (the gateway did, to charge it)."""
        first, it = att.result
        headers = self._headers(att, request_id, decision)
        upstream_model = _rename_model(first, att.model)
        if upstream_model:
            headers["x-doka-upstream-model"] = upstream_model
        headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
        once = _Once()
        body = self._sse(first, it, att, requested, request_id, grant, started, once, dialect, strip_usage)
        return _SettlingStream(body, partial(self._stream_abandoned, once, it, att, requested, request_id, grant,
                                             started, body), media_type="text/event-stream", headers=headers)

    def _stream_abandoned(self, once: "_Once", it: AsyncIterator[dict] | None, att: _Attempt, requested: str,
                          request_id: str, grant: Any, started: float, body: AsyncIterator[bytes]) -> None:
        """The response ended; if `_sse` has not settled yet (client gone), make it happen now.

        A suspended `_sse` is closed (its `finally` settles what it delivered, status 499); one
        that never started runs no `finally`, so the stream is settled here instead.
        """
        if once.done:
            return

        async def close() -> None:
            try:
                await body.aclose()
            finally:
                if once.claim():
                    self._start_settle(grant, request_id, requested, att.model, att.usage, 499, started, att.reason,
                                       True, att.side, hold=att.hold)
                    if it is not None:
                        await it.aclose()  # stop the upstream call

        task = asyncio.ensure_future(close())
        self._settling.add(task)
        task.add_done_callback(partial(_settled, self._settling, request_id))

    async def _sse(self, first: dict | None, it: AsyncIterator[dict] | None, att: _Attempt, requested: str,
                   request_id: str, grant: Any, started: float, once: "_Once",
                   dialect: Any = OpenAIDialect, strip_usage: bool = False) -> AsyncIterator[bytes]:
        """Chunks as they come; an error after the first chunk ends the stream with an error event.

        The provider's usage is charged; with `strip_usage` the client does not see it (it did not
        ask: OpenAI sends none then).

        `dialect` writes each chunk, the end and a mid-stream error (OpenAI's SSE by default).
        """
        encode = dialect.chunk
        usage: dict | None = att.usage
        status = 200
        observe = getattr(grant, "observe", None) or (lambda chunk: None)  # accounts counts delivered tokens
        timed: AsyncIterator[dict] | None = None
        try:
            if first is not None:
                usage = first.get("usage") or usage
                observe(first)
                if not strip_usage or (first := _without_usage(first)) is not None:
                    yield encode(first)
            if it is not None:
                idle = self._stalls[att.model].idle if att.model in self._stalls else None
                timed = stalls.chunks(it, att.model, idle)  # raises StreamStalled past `idle`
                async for chunk in timed:
                    _rename_model(chunk, att.model)
                    observe(chunk)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if strip_usage and (chunk := _without_usage(chunk)) is None:
                        continue
                    data = encode(chunk)
                    if data:  # a translating dialect may hold a chunk back (usage, finish reason)
                        yield data
            # settle before `[DONE]`, and wait for it as a plain answer does: once the client has
            # `[DONE]` this generator may never run again, and a replica killed right after it
            # must not take the ledger row with it (the settle itself is shielded from cancellation)
            if once.claim():
                await self._settle(grant, request_id, requested, att.model, usage, status, started, att.reason, True,
                                   att.side, hold=att.hold)
            yield dialect.end()
        except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
            status = 499
            raise
        except stalls.StreamStalled as e:  # the tier went quiet: end the stream, charge what was sent
            status = stalls.STALLED_STATUS
            logger.warning("ingress: %s", e)
            yield dialect.error(e.error())
        except Exception as e:
            err = _unwrap(e)
            status = err.status if isinstance(err, UpstreamError) else 502
            msg = err.message if isinstance(err, UpstreamError) else f"{type(err).__name__}: {err}"
            yield dialect.error(OpenAIError(status, f"{att.model} failed mid-stream: {msg}", code="upstream_stream_error"))
        finally:
            if once.claim():  # cut short (error, client gone): charge what was delivered
                self._start_settle(grant, request_id, requested, att.model, usage, status, started, att.reason, True,
                                   att.side, hold=att.hold)
            if timed is not None:
                await timed.aclose()
            if it is not None:
                await it.aclose()  # no-op when finished; cancels the upstream call otherwise

    # ------------------------------------------------------------------ helpers
    def _headers(self, att: _Attempt, request_id: str, decision: RouteDecision | None) -> dict[str, str]:
        headers = {
            "x-doka-model": att.model,
            "x-doka-route-reason": att.reason,
            "x-doka-request-id": request_id,
            "x-doka-tiers-tried": ",".join(att.tried),
        }
        if decision is not None:
            headers["x-doka-router"] = decision.reason[:200]
            headers["x-doka-strategy"] = decision.strategy
            if decision.artifact_version:
                headers["x-doka-artifact-version"] = decision.artifact_version
        return headers

    async def _settle(self, grant: Any, request_id: str, requested: str, model: str | None, usage: dict | None,
                      status: int, started: float, reason: str | None, stream: bool,
                      side: list[tuple[str, dict]] | None = None, hold: str | None = None) -> None:
        task = self._start_settle(grant, request_id, requested, model, usage, status, started, reason, stream, side,
                                  hold)
        if task is None:
            return
        try:
            await asyncio.shield(task)  # a cancelled caller (client gone) leaves the settle running
        except Exception:  # logged by _settled; the answer is already on its way, never break it
            pass

    def _start_settle(self, grant: Any, request_id: str, requested: str, model: str | None, usage: dict | None,
                      status: int, started: float, reason: str | None, stream: bool,
                      side: list[tuple[str, dict]] | None = None, hold: str | None = None) -> asyncio.Task | None:
        """Record the request and start its ledger settlement as a task of its own.

        Not tied to the request's coroutine: a stream's generator may be cancelled or never
        resumed once the client has `[DONE]`, and the ledger row must not go with it. The
        replica's __del__ waits for unfinished settlements on graceful shutdown. `side`: the
        other calls made for it (a cascade's), added to its tokens and cost. `hold`: a stream's
        provider-limit hold, settled here with the tokens the stream used (once: callers claim `_Once`).
        """
        usage = usage or {}
        if hold is not None and self._plimits is not None:
            used = provider_gate.tokens_of(charged_usage(usage, stream, getattr(grant, "meter", None)) or usage)
            self._plimits.settle(hold, used)
        keyed = not isinstance(self._accounts, NoAccounts)
        # keys off and one call: nothing to add up (the observer prices the answer itself)
        p, c, cost = self._charge(grant, model, usage, stream, side) if keyed or side else (0, 0, None)
        self._obs.finish(request_id, model, usage, status, None if status < 400 else f"http_{status}", reason,
                         cost if side else None)
        if not keyed:
            return None
        task = asyncio.ensure_future(self._accounts.settle(
            grant, request_id=request_id, model_requested=requested, model=model,
            prompt_tokens=p, completion_tokens=c, cost_usd=cost, status=status,
            latency_ms=(time.perf_counter() - started) * 1000, route_reason=reason, stream=stream))
        self._settling.add(task)
        task.add_done_callback(partial(_settled, self._settling, request_id))
        return task

    def _charge(self, grant: Any, model: str | None, usage: dict, stream: bool,
                side: list[tuple[str, dict]] | None) -> tuple[int, int, float | None]:
        """Prompt tokens, completion tokens and USD of a request: the answering call's plus every
        side call's (a cascade's); USD None when no model called has a price."""
        if side and model:  # the side calls' tokens are added to what the stream delivered
            usage = charged_usage(usage, stream, getattr(grant, "meter", None)) or usage
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        calls = [(model, p, c)] + [
            (m, int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)) for m, u in side or ()]
        costs = [x for m, cp, cc in calls
                 if m and (e := self.cfg.model(m)) is not None and (x := e.cost(cp, cc)) is not None]
        return sum(cp for _, cp, _ in calls), sum(cc for _, _, cc in calls), (sum(costs) if costs else None)

    def _model_list(self) -> dict[str, Any]:
        data = []
        for name in self._public:
            entry = self.cfg.model(name)
            info: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "doka"}
            if name == self._auto:
                info["doka"] = {"kind": "router", "strategy": self.cfg.router.strategy, "candidates": self._candidates,
                                "novel_cascade": self._novel}
            elif name in self._cascades:
                c = self._cascades[name]
                info["doka"] = {"kind": "cascade", "weak": c.weak, "verifier": c.verifier, "strong": c.strong,
                                "fallbacks": self.cfg.chain_for(name)[1:]}
            elif entry is None:
                info["doka"] = {"kind": "chain", "models": self.cfg.fallbacks[name]}
            else:
                mi = entry.model_info
                info["doka"] = {"kind": "model", "mode": mi.mode, "provider": entry.provider, "tier": mi.tier,
                                "parallel": mi.parallel, "timeout": mi.timeout,
                                "fallbacks": self.cfg.chain_for(name)[1:]}
                if name in self._caps:
                    info["doka"]["capabilities"] = self._caps[name]
                if mi.limits is not None:  # the provider's limits (the counts: /metrics)
                    info["doka"]["limits"] = mi.limits.model_dump(exclude_none=True)
                if mi.queue_limit is not None:  # the load itself: /health/readiness and /metrics
                    info["doka"]["queue_limit"] = mi.queue_limit
            data.append(info)
        return {"object": "list", "data": data}
