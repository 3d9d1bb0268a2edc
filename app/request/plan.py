"""Planning a request: which tiers to try, in what order, and why.

Explicit names take their fallback chain; `auto` asks the router among its candidates. Either
way only what the key may use is ever called (its allow-list), only models able to serve the
request (tools, images, JSON output, context: app/capabilities.py), and `auto` leaves out
models whose provider limit is used up, tiers that are down and local tiers whose queue is
full. What was left out is named in the route reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Protocol

from app import capabilities
from app.config import DokaConfig
from app.errors import OpenAIError, bad_request, model_not_allowed, provider_limit_exceeded
from app.request.catalog import Catalog
from app.request.options import routing_options
from app.request.tiers import Tiers
from deployments import tier_load
from router.decision import RouteDecision

logger = logging.getLogger("ray.serve")


class RouterPort(Protocol):
    """The router as the core sees it (deployments/router.py: in this replica or a deployment).

    `route` returns an awaitable the planner may `cancel()` if it stops needing the answer."""

    def route(self, prompt: str, cost_weight: float | None, candidates: list[str]) -> Awaitable[RouteDecision]: ...

    def report(self, model: str, ok: bool) -> None: ...


@dataclass
class Plan:
    chain: list[str]  # the tiers to try, in order
    reason: str  # the base route reason (x-doka-route-reason of the first tier)
    decision: RouteDecision | None  # the router's, for `auto`


class EarlyRoute:
    """A router call sent before the request was authorized (see `Planner.route_early`)."""

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


class Planner:
    def __init__(self, cfg: DokaConfig, catalog: Catalog, tiers: Tiers, router: RouterPort,
                 obs: Any, plimits: Any = None) -> None:
        self.cfg, self.catalog, self.tiers, self.router, self.obs, self.plimits = (
            cfg, catalog, tiers, router, obs, plimits)

    def route_early(self, requested: str, weight_header: str | None, ext: Any, prompt: str,
                    needs: capabilities.Needs | None = None) -> EarlyRoute | None:
        """`auto`: send the router call before authorization, so the two hops overlap.

        Bad routing options start nothing here: `plan` raises them once the request is
        authorized, so the refusal has its ledger row. A key whose allow-list excludes some
        candidate gets a fresh decision among its own models in `plan`.
        """
        cat = self.catalog
        if requested != cat.auto or not cat.candidates:
            return None
        try:
            cost_weight, candidates = routing_options(weight_header, ext, cat.candidates)
        except OpenAIError:
            return None
        offered = candidates
        if needs is not None:
            candidates, _ = capabilities.split(candidates, cat.caps, needs)
            if not candidates:  # `plan` refuses it, with the reason
                return None
        candidates, _ = self.tiers.loads.split(candidates)  # as `plan` does: no full local tier
        return EarlyRoute(self.router.route(prompt, cost_weight, candidates), cost_weight, candidates, offered)

    async def plan(self, requested: str, prompt: str, weight_header: str | None = None, ext: Any = None,
                   allowed: list[str] | None = None, early: EarlyRoute | None = None,
                   needs: capabilities.Needs | None = None) -> Plan:
        """The ordered tiers to try, the base route reason and the router's decision (auto).

        `allowed`: the key's model allow-list (empty/None: every model). Only allowed models are
        ever called: the router chooses among allowed candidates, and chain tiers outside the
        list are skipped; nothing left is a 403. `early`: the call `route_early` sent.
        `needs`: what the request needs: candidates and tiers that cannot serve it are left out
        and named in the route reason; none left is a 400.
        """
        cat = self.catalog
        needs = needs or capabilities.Needs()
        permitted = set(allowed) if allowed else None
        cascade = cat.cascades.get(requested)
        if cascade is not None and permitted is not None:
            missing = sorted({cascade.weak, cascade.verifier} - permitted)
            if missing:  # the answer comes from agreement of the two: both must be callable
                raise model_not_allowed(f"cascade {requested!r} calls {', '.join(missing)}, which this key may not use",
                                        permitted)
        if requested != cat.auto:
            reason = f"chain:{requested}" if requested in self.cfg.fallbacks else "explicit"
            chain = allowed_chain(self.cfg.chain_for(requested), permitted, requested)
            chain, dropped = self.capable(chain, needs, requested)
            return Plan(chain, reason + (f";filtered={capabilities.describe(dropped)}" if dropped else ""), None)
        if not cat.candidates:
            raise OpenAIError(503, "No model is available for automatic routing", code="no_candidates")
        if early is not None:  # its options were parsed (and valid) when it was sent
            cost_weight, candidates = early.cost_weight, early.offered
        else:
            cost_weight, candidates = routing_options(weight_header, ext, cat.candidates)
        if permitted is not None:
            candidates = [c for c in candidates if c in permitted]
            if not candidates:
                raise model_not_allowed(f"this key may use none of the {cat.auto!r} candidates", permitted)
        candidates, filtered = self.capable(candidates, needs, cat.auto)
        candidates, used_up = await self._open(candidates)
        candidates, tiers_down = await self.tiers.serving(candidates)
        candidates, full = self.tiers.loads.split(candidates)  # local tiers whose queue is at its limit
        if early is not None and early.candidates != candidates:
            early.cancel()  # the allow-list narrowed the candidates: decide among the key's own
            early = None
        with self.obs.routing(candidates, early.started if early is not None else None) as routing:
            try:
                if early is not None:
                    decision = await early.response
                else:
                    decision = await self.router.route(prompt, cost_weight, candidates)
            except Exception as e:
                logger.warning("ingress: router failed (%s); using the first candidate", e)
                decision = RouteDecision(candidates[0], "router_unavailable", None, f"router error: {type(e).__name__}")
            novel = self._novel_chain(permitted) if decision.familiar is False and cat.novel else []
            novel = capabilities.split(novel, cat.caps, needs)[0] if novel else novel  # tiers able to answer
            if novel:  # the key may call the cascade's weak and verifier and some tier it escalates to
                decision = decision.replace(cascade=cat.novel)
            routing.decided(decision)
        note = f";filtered={capabilities.describe(filtered)}" if filtered else ""
        if used_up or tiers_down or full:
            note += ";skipped=" + ",".join([*(f"{m}:provider_limit_{r['limit']}" for m, r in used_up.items()),
                                            *(f"{m}:down" for m in tiers_down),
                                            *(f"{m}:{tier_load.QUEUE_FULL}" for m in full)])
        if filtered:
            decision = decision.replace(reason=f"{decision.reason}; not capable: {capabilities.describe(filtered)}")
        if novel:
            return Plan(novel, f"auto:{decision.strategy}{note}", decision)
        chain = allowed_chain(self.cfg.chain_for(decision.model), permitted, requested)
        chain, _ = self.capable(chain, needs, requested)  # its fallback tiers: the capable ones
        return Plan(chain, f"auto:{decision.strategy}{note}", decision)

    async def _open(self, candidates: list[str]) -> tuple[list[str], dict[str, dict]]:
        """`auto`'s candidates without the models whose provider limit is used up (and those,
        with why); a 429 with Retry-After at the soonest reset when none is left."""
        if self.plimits is None:
            return candidates, {}
        used_up = await self.plimits.used_up(candidates)
        if not used_up:
            return candidates, {}
        kept = [c for c in candidates if c not in used_up]
        if not kept:
            raise provider_limit_exceeded(list(used_up.values()), [])
        return kept, used_up

    def capable(self, models: list[str], needs: capabilities.Needs,
                requested: str) -> tuple[list[str], dict[str, list[str]]]:
        """`models` that can serve `needs` and why the others cannot; a 400 naming the missing
        capability when none can (before any call: a provider's own 400 would say less)."""
        kept, dropped = capabilities.split(models, self.catalog.caps, needs)
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
        novel = self.catalog.novel
        spec, chain = self.catalog.cascades[novel], self.cfg.chain_for(novel)  # type: ignore[index,arg-type]
        if permitted is None:
            return chain
        if not {spec.weak, spec.verifier} <= permitted:
            return []
        return [m for m in chain if m in permitted]


def allowed_chain(chain: list[str], permitted: set[str] | None, requested: str) -> list[str]:
    """The chain without the tiers the key may not use (403 when none is left)."""
    if permitted is None:
        return chain
    kept = [m for m in chain if m in permitted]
    if not kept:
        raise model_not_allowed(f"this key may use no model of {requested!r} ({', '.join(chain)})", permitted)
    return kept
