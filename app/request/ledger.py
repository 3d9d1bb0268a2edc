"""Settling a request: what it cost (one charge rule) and where that is written down.

`Ledger.start` is `RequestContext.settle`'s back end: it releases a stream's provider-limit
hold with the tokens actually used, closes the request's trace, and starts the accounts
settlement as a task of its own (a stream's generator may be cancelled or never resumed once
the client has `[DONE]`; the row must not go with it). `drain` is the replica's graceful
shutdown: it waits for the settlements still running.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, Protocol

from accounts import provider_gate
from accounts.estimate import charged_usage
from app.config import DokaConfig
from app.request.context import RequestContext

logger = logging.getLogger("ray.serve")


class Accounts(Protocol):
    """The key/quota seam (accounts/gateway.py `GatewayAccounts`, or `NoAccounts` with keys off)."""

    async def authorize(self, request: Any, model: str, body: dict[str, Any], request_id: str,
                        calls: int = 1) -> Any: ...

    async def settle(self, grant: Any, **outcome: Any) -> None: ...


class NoAccounts:
    """The accounts seam when keys are off: admits everyone, records nothing."""

    async def authorize(self, request: Any, model: str, body: dict[str, Any], request_id: str,
                        calls: int = 1) -> Any:
        return None

    async def settle(self, grant: Any, **outcome: Any) -> None:
        return None


def charge(cfg: DokaConfig, grant: Any, model: str | None, usage: dict, stream: bool,
           side: list[tuple[str, dict]] | None) -> tuple[int, int, float | None]:
    """Prompt tokens, completion tokens and USD of a request: the answering call's plus every
    side call's (a cascade's); USD None when no model called has a price (app/pricing.py)."""
    if side and model:  # the side calls' tokens are added to what the stream delivered
        usage = charged_usage(usage, stream, getattr(grant, "meter", None)) or usage
    p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    calls = [(model, p, c)] + [
        (m, int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)) for m, u in side or ()]
    costs = [x for m, cp, cc in calls
             if m and (e := cfg.model(m)) is not None and (x := e.cost(cp, cc)) is not None]
    return sum(cp for _, cp, _ in calls), sum(cc for _, _, cc in calls), (sum(costs) if costs else None)


class Ledger:
    """Writes settled requests to the accounts, the provider-limit gate and observability."""

    def __init__(self, cfg: DokaConfig, accounts: Accounts, obs: Any, plimits: Any = None) -> None:
        self.cfg, self.accounts, self.obs, self.plimits = cfg, accounts, obs, plimits
        self.keyed = not isinstance(accounts, NoAccounts)
        self._running: set[asyncio.Task] = set()

    def start(self, ctx: RequestContext, status: int, usage: dict | None) -> asyncio.Task | None:
        """Record the request and start its ledger settlement; the task, or None with keys off."""
        usage = usage or {}
        if ctx.hold is not None and self.plimits is not None:
            used = provider_gate.tokens_of(charged_usage(usage, ctx.stream, getattr(ctx.grant, "meter", None)) or usage)
            self.plimits.settle(ctx.hold, used)
        # keys off and one call: nothing to add up (the observer prices the answer itself)
        p, c, cost = (charge(self.cfg, ctx.grant, ctx.model, usage, ctx.stream, ctx.side)
                      if self.keyed or ctx.side else (0, 0, None))
        self.obs.finish(ctx.id, ctx.model, usage, status, None if status < 400 else f"http_{status}", ctx.reason,
                        cost if ctx.side else None)
        if not self.keyed:
            return None
        task = asyncio.ensure_future(self.accounts.settle(
            ctx.grant, request_id=ctx.id, model_requested=ctx.requested, model=ctx.model,
            prompt_tokens=p, completion_tokens=c, cost_usd=cost, status=status,
            latency_ms=ctx.latency_ms(), route_reason=ctx.reason, stream=ctx.stream))
        self.track(task, ctx.id)
        return task

    def track(self, task: asyncio.Task, request_id: str) -> None:
        """Keep a settle-related task until it is done (shutdown waits for it), log its failure."""
        self._running.add(task)
        task.add_done_callback(partial(self._done, request_id))

    def _done(self, request_id: str, task: asyncio.Task) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("ingress: settle failed for %s", request_id, exc_info=task.exception())

    def pending(self) -> list[asyncio.Task]:
        """Settlements (and provider-limit releases) not finished yet."""
        out = [t for t in self._running if not t.done()]
        if self.plimits is not None:
            out += self.plimits.pending()
        return out
