"""The ingress side of provider limits: ask the accounts core before calling a limited model.

Why a seam of its own: the chain loop (app/request/run.py `ChainRunner.run`) needs one question
per tier ("may I call mock-groq now?") and one answer back when the call is over, and `auto`
needs the candidates that are used up. All counting happens in the accounts core
(accounts.provider_limits), which every ingress replica shares, so the limit holds across
replicas. Models without limits never cost a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from accounts import estimate
from accounts.client import Accounts
from accounts.limits import ModelLimits

log = logging.getLogger("ray.serve")

_GAUGES: dict[str, Any] = {}


def _gauges() -> dict[str, Any]:
    """The /metrics gauges, created once per process in prometheus_client's default registry."""
    if not _GAUGES:
        from prometheus_client import Gauge

        _GAUGES["remaining"] = Gauge("doka_provider_limit_remaining",
                                     "requests or tokens left in the provider limit's current window",
                                     ["model", "limit"])
        _GAUGES["reset"] = Gauge("doka_provider_limit_reset_seconds",
                                 "seconds until the provider limit's current window resets", ["model", "limit"])
        _GAUGES["in_flight"] = Gauge("doka_provider_limit_in_flight",
                                     "calls to a limited model admitted and not yet settled", ["model"])
    return _GAUGES


class ProviderGate:
    """Admission of calls to limited models, for one ingress replica."""

    def __init__(self, accounts: Accounts, limited: set[str], owner: str, limits: dict[str, ModelLimits]) -> None:
        self.accounts = accounts
        self.models = frozenset(limited)
        self.owner = owner  # the replica: holds of a replica that dies are settled by the core
        self.limits = limits  # (context_window, max_output_tokens): the worst case a hold covers
        self._tasks: set[asyncio.Task] = set()

    def limited(self, model: str | None) -> bool:
        return model in self.models

    async def admit(self, model: str, body: dict[str, Any]) -> str | dict[str, Any]:
        """A hold id (call the model, then `settle`), or the refusal ({model, limit, retry_after, ...}).

        A hold granted after this caller gave up (cancelled, accounts too slow) is released.
        """
        lim = self.limits.get(model)
        tokens = estimate.reservation(body, max_output_tokens=lim[1], context_window=lim[0]) if lim else \
            estimate.reservation(body)
        got = await self._ask("provider_admit", model, tokens, self.owner, on_abandon=self._release_late)
        if "refused" in got:
            return got["refused"]
        return got["hold"]

    def _release_late(self, task: asyncio.Future, status: int) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        hold = (task.result().get("ok") or {}).get("hold")
        if hold:
            self._spawn(self.accounts.call("provider_release", hold))

    def settle(self, hold: str, tokens: int) -> asyncio.Task:
        """Count the call with the tokens it used (0 when it failed); a task of its own, so a
        cancelled request still settles. The core closes a hold once, whoever asks twice."""
        return self._spawn(self.accounts.call("provider_settle", hold, int(tokens)))

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("provider limit settle failed: %r (the core settles it when this replica is gone)",
                        task.exception())

    def pending(self) -> list[asyncio.Task]:
        return [t for t in self._tasks if not t.done()]

    async def used_up(self, models: list[str]) -> dict[str, dict[str, Any]]:
        """Which of `models` cannot take a request now (none asked when none is limited)."""
        if not any(m in self.models for m in models):
            return {}
        return await self._ask("provider_used_up", [m for m in models if m in self.models])

    async def _ask(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A hot-path core call; the core unreachable is the ingress's 503 (never a 500)."""
        from accounts.errors import AccountsError
        from app.errors import OpenAIError

        try:
            return await self.accounts._hot(method, *args, batched=False, **kwargs)
        except AccountsError as e:
            raise OpenAIError(e.status, e.message, type=e.type, param=e.param, code=e.code,
                              headers=e.headers()) from None

    async def remaining(self) -> dict[str, Any] | None:
        """The core's counts now: {"windows": [{model, limit, remaining, reset_s}], "in_flight":
        {model: n}}; None when the accounts core cannot be asked (a scrape or a page never fails over it)."""
        try:
            return await self.accounts._hot("provider_remaining", batched=False)
        except Exception as e:
            log.debug("provider limits: remaining not read: %r", e)
            return None

    async def export_metrics(self) -> None:
        """Set the /metrics gauges from the core's counts; the accounts core down leaves them as they were."""
        got = await self.remaining()
        if got is None:
            return
        g = _gauges()
        for r in got["windows"]:
            g["remaining"].labels(r["model"], r["limit"]).set(r["remaining"])
            g["reset"].labels(r["model"], r["limit"]).set(r["reset_s"])
        for model, n in got["in_flight"].items():
            g["in_flight"].labels(model).set(n)


def tokens_of(usage: dict[str, Any] | None) -> int:
    """Prompt + completion tokens of an OpenAI usage dict (0 when absent)."""
    usage = usage or {}
    return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
