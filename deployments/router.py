"""The router: turns an `auto` request into one model name.

Where it runs is `router.placement`: `ingress` (default) holds a RouterService in each ingress
replica (`InProcessRouter`, same calls as a handle, no hop); `deployment` serves it as the
Router deployment with its own replicas and autoscaling (a transformer featurizer, GPUs).

Interface (stable):
  route(prompt, cost_weight, candidates) -> {model, strategy, score, artifact_version, reason,
                                            degraded, decision_ms}
  reconfigure(user_config)  # Serve calls it with `{strategy, registry, artifact, ...}`
  status() -> dict          # learned/degraded/loading detail for the ingress readiness check
  report(model, ok)          # the ingress reports failed tiers so cheapest-healthy avoids them

`router.strategy: learned`: a signed artifact from the registry scores every candidate
(router/engine.py); embedding + scoring of concurrent requests is batched with `serve.batch`
and runs off the event loop; the embedding model is loaded once per replica. Artifacts load in
the background and swap atomically (router/reloader.py). While none is usable (missing, corrupt,
bad signature, still loading) `router.fallback_strategy` answers, each decision says
`degraded: true`, and `status()` says why. Static strategies (router/static.py) need nothing.
Placement, GPUs and reloads: docs/architecture.md and docs/kubernetes.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from app.config import DokaConfig, parse_config
from app.pricing import rank_price
from router.decision import RouteDecision
from router.static import CheapestHealthy, StaticStrategy, WeightedRoundRobin

logger = logging.getLogger("ray.serve")
_UNSCORED: tuple[None, None, None] = (None, None, None)  # no engine, or scoring failed: the fallback answers


def make_static(name: str, cfg: DokaConfig) -> StaticStrategy:
    if name == "cheapest_healthy":
        return CheapestHealthy({m.model_name: rank_price(m.price) for m in cfg.model_list})
    return WeightedRoundRobin({m.model_name: m.model_info.weight for m in cfg.model_list})


class StaticRouter:
    """The routing logic without Ray, so it is testable and reusable by other deployments."""

    def __init__(self, cfg: DokaConfig) -> None:
        self.cfg = cfg
        self.default_candidates = cfg.auto_candidates()
        wanted = cfg.router.strategy
        if wanted == "learned":
            logger.info("router: learned strategy not available here; using %s", cfg.router.fallback_strategy)
            self.strategy = make_static(cfg.router.fallback_strategy, cfg)
            self.prefix = "fallback:"
        else:
            self.strategy = make_static(wanted, cfg)
            self.prefix = ""

    def route(self, prompt: str, cost_weight: float | None = None, candidates: list[str] | None = None) -> RouteDecision:
        pool = [c for c in (candidates or self.default_candidates) if c in self.default_candidates]
        choice = self.strategy.choose(pool or self.default_candidates)
        return RouteDecision(choice.model, self.strategy.name, choice.score,
                             f"{self.prefix}{self.strategy.name}: {choice.reason}")

    def report(self, model: str, ok: bool) -> None:
        if isinstance(self.strategy, CheapestHealthy):
            (self.strategy.mark_ok if ok else self.strategy.mark_failed)(model)




# Router settings a user_config may change in place (everything else needs a redeploy).
RECONFIGURABLE = ("strategy", "fallback_strategy", "artifact", "registry", "cost_weight", "poll_interval_s",
                  "max_batch_size", "batch_wait_timeout_s")
# How long a *new* replica's first reconfigure waits for its artifact before it starts serving
# (with the fallback strategy until the load finishes). Later reloads never wait.
INITIAL_LOAD_WAIT_S = float(os.environ.get("DOKA_ROUTER_INITIAL_LOAD_WAIT_S", "60"))


def merge_user_config(raw: dict[str, Any], user_config: dict[str, Any] | None) -> DokaConfig:
    """The deployment's config with the user_config's router settings applied on top."""
    merged = dict(raw)
    patch = {k: v for k, v in (user_config or {}).items() if k in RECONFIGURABLE}
    merged["router"] = {**(raw.get("router") or {}), **patch}
    return parse_config(merged, source="router user_config")


def build_engine(cfg: DokaConfig, target: Any) -> Any:
    """Load, verify and bind one artifact (runs in the loader thread; raises ArtifactError)."""
    from router.artifact import ArtifactError
    from router.engine import LearnedEngine
    from router.reloader import router_signing_key
    from router.runtime import LearnedRouter

    if not target.registry:
        raise ArtifactError("router.registry is not set; nowhere to load a learned router from")
    key = router_signing_key(cfg)
    if key is None:
        raise ArtifactError("no artifact signing key: set DOKA_SIGNING_KEY (or DOKA_SIGNING_KEY_FILE), or run "
                            "`doka router bootstrap` to create a local dev key in the data dir")
    # The signed artifact names its featurizer (id + weights fingerprint, both verified on load);
    # featurizers are shared per process, so a replica loads each embedding model once.
    router = LearnedRouter.load(target.registry, target.artifact, key)
    engine = LearnedEngine(router, cfg)
    if not engine.models:
        raise ArtifactError(f"artifact {router.version} knows labels {router.labels}, none of which is an `auto` "
                            "candidate; set model_info.route_label on the models it should route to")
    engine.predict(["warm up the embedding session"])  # first ONNX run allocates; do it off the hot path
    return engine


def _latest(target: Any) -> str | None:
    from router.registry import Registry

    return Registry(target.registry).latest_version() if target.registry else None


class RouterService:
    """Static or learned routing for `auto`, reconfigurable in place.

    One class, two placements (`router.placement`): wrapped as the Router deployment below, or
    held by each ingress replica through `InProcessRouter` (no hop; the ingress's own
    `reconfigure` forwards the router user_config here).
    """

    def __init__(self, config: dict[str, Any], inline: bool = False) -> None:
        from router.reloader import ArtifactSlot

        self._inline = inline  # in the ingress's process: cheap featurizers score on its loop
        self._tick: list[tuple[str, asyncio.Future]] = []
        self._raw = config
        self._cfg = parse_config(config, source="router deployment")
        self._static = StaticRouter(self._cfg)
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="doka-router-infer")
        self._slot: ArtifactSlot = ArtifactSlot(lambda t: build_engine(self._cfg, t), lambda e: e.version, _latest)
        self._configured = False

    # ------------------------------------------------------------------ configuration
    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply router settings; a learned artifact loads in the background (returns at once).

        Serve holds a replica's start and every in-place update until this returns, so only a
        brand-new replica waits (up to DOKA_ROUTER_INITIAL_LOAD_WAIT_S) for its first artifact:
        it receives no traffic until then anyway, and then starts with the learned router rather
        than a burst of fallback decisions. Replicas already serving never wait.
        """
        from router.reloader import Target

        first = not self._configured
        self._configured = True
        cfg = merge_user_config(self._raw, user_config)
        self._cfg = cfg
        self._static = StaticRouter(cfg)
        r = cfg.router
        self._score.set_max_batch_size(r.max_batch_size)
        self._score.set_batch_wait_timeout_s(r.batch_wait_timeout_s)
        if r.strategy != "learned":
            self._slot.clear(f"strategy {r.strategy} needs no artifact")
            self._slot.start_polling(0)
            return
        task = self._slot.request(Target(r.registry, r.artifact))
        self._slot.start_polling(r.poll_interval_s)
        if first and INITIAL_LOAD_WAIT_S > 0:
            try:
                await asyncio.wait_for(asyncio.shield(task), INITIAL_LOAD_WAIT_S)
            except asyncio.TimeoutError:
                logger.warning("router: artifact still loading after %gs; serving the fallback meanwhile",
                               INITIAL_LOAD_WAIT_S)

    async def _ensure_configured(self) -> None:
        if not self._configured:  # bound without a user_config: Serve never calls reconfigure
            await self.reconfigure({})

    # ------------------------------------------------------------------ the hot path
    async def route(self, prompt: str, cost_weight: float | None = None,
                    candidates: list[str] | None = None) -> RouteDecision:
        started = time.perf_counter()
        await self._ensure_configured()
        cfg = self._cfg
        weight = cfg.router.cost_weight if cost_weight is None else float(cost_weight)
        if not math.isfinite(weight) or weight < 0:
            weight = cfg.router.cost_weight
        learned = cfg.router.strategy == "learned"
        why, degraded = "", learned
        if learned and self._slot.current is not None:
            if self._inline and self._slot.current.inline:
                engine, row, familiar = await self._score_this_tick(prompt or "")
            else:
                engine, row, familiar = await self._score(prompt or "")
            if engine is not None:
                allowed = [c for c in (candidates or self._static.default_candidates)]
                choice = engine.decide(row, weight, allowed)
                if choice is not None:  # familiar: a gated artifact's in-distribution path, or None
                    return RouteDecision(choice.model, "learned", choice.score, choice.reason, engine.version,
                                         degraded=False, familiar=familiar,
                                         decision_ms=round((time.perf_counter() - started) * 1000, 3))
                why, degraded = f"artifact {engine.version} knows none of the candidates {allowed}", False
            else:
                why = "learned router error (see replica log)"
        decision = self._static.route(prompt, weight, candidates)
        if learned:
            why = why or self._slot.reason
            decision = decision.replace(reason=f"{decision.reason} ({why})"[:300])
        return decision.replace(degraded=degraded, decision_ms=round((time.perf_counter() - started) * 1000, 3))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _score(self, prompts: list[str]) -> list[tuple[Any, np.ndarray | None, bool | None]]:
        """Embed + score every prompt of concurrent requests in one call, off the event loop:
        (engine, quality row, familiar) each.

        One engine snapshot serves the whole batch, so a swap mid-batch cannot mix artifacts.
        """
        engine = self._slot.current
        if engine is None:
            return [_UNSCORED] * len(prompts)
        try:
            scored = await asyncio.get_running_loop().run_in_executor(self._infer_pool, engine.predict, prompts)
        except Exception:  # noqa: BLE001 - never fail a request: the fallback strategy answers
            logger.exception("router: scoring a batch of %d failed", len(prompts))
            return [_UNSCORED] * len(prompts)
        return [(engine, *scored.row(i)) for i in range(len(prompts))]

    def _score_this_tick(self, prompt: str) -> "asyncio.Future[tuple[Any, np.ndarray | None, bool | None]]":
        """In the ingress's process with a table-lookup featurizer (~0.1 ms a prompt): every
        prompt asked for in this event-loop iteration is scored in one call on the loop. No
        thread hop, and no batch wait (serve.batch holds a lone request up to batch_wait_timeout_s)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._tick:
            loop.call_soon(self._flush_tick)
        self._tick.append((prompt, future))
        return future

    def _flush_tick(self) -> None:
        batch, self._tick = self._tick, []
        engine = self._slot.current
        try:
            scored = engine.predict([p for p, _ in batch]) if engine is not None else None
        except Exception:  # noqa: BLE001 - never fail a request: the fallback strategy answers
            logger.exception("router: scoring a batch of %d failed", len(batch))
            scored = None
        for i, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result((engine, *scored.row(i)) if scored is not None else _UNSCORED)

    async def status(self) -> dict[str, Any]:
        """What the ingress shows on /health/readiness."""
        await self._ensure_configured()
        r = self._cfg.router
        slot = self._slot.status()
        learned = r.strategy == "learned"
        serving = "learned" if learned and slot["state"] == "ready" else (
            r.fallback_strategy if learned else r.strategy)
        return {"strategy": r.strategy, "serving": serving, "degraded": learned and serving != "learned",
                "fallback_strategy": r.fallback_strategy, "poll_interval_s": r.poll_interval_s,
                "max_batch_size": r.max_batch_size, **slot}

    async def report(self, model: str, ok: bool) -> None:
        self._static.report(model, ok)

    async def check_health(self) -> None:  # a degraded router still answers; nothing to fail on
        return None


RouterDeployment = serve.deployment(name="Router")(RouterService)


class _LocalCall:
    """`.remote(...)` of one RouterService method: a task on this event loop (awaitable, cancellable)."""

    __slots__ = ("_method",)

    def __init__(self, method: Any) -> None:
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> "asyncio.Task[Any]":
        return asyncio.ensure_future(self._method(*args, **kwargs))


class InProcessRouter:
    """A RouterService in the caller's process, called like the Router deployment's handle.

    `router.placement: ingress`: the ingress keeps its `self._router.route.remote(...)` calls and
    pays no Serve round trip (measured cost of that hop: docs/benchmarks.md).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.service = RouterService(config, inline=True)
        self.route = _LocalCall(self.service.route)
        self.status = _LocalCall(self.service.status)
        self.report = _LocalCall(self.service.report)

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        await self.service.reconfigure(user_config)
