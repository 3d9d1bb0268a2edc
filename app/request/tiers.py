"""The tiers a request can call: a backend per model name, its timeouts, and whether it serves now.

A tier is "down" when it was left out at start (the graph builder's pre-start checks) or when
its own Serve application is not running now (`TierWatch`, deployments/tier_apps.py, fed by a
status fetch the shell passes in). A local tier whose queue is at its limit is "full"
(`TierLoads`, deployments/tier_load.py): skipped while another tier may answer.
"""

from __future__ import annotations

from typing import Any

from deployments import stalls
from deployments.tier_apps import TierWatch
from deployments.tier_load import TierLoads


class Tiers:
    def __init__(self, backends: dict[str, Any], timeouts: dict[str, float],
                 stall_timeouts: dict[str, stalls.TierTimeouts] | None = None,
                 down: dict[str, str] | None = None, watch: TierWatch | None = None,
                 loads: TierLoads | None = None) -> None:
        """`backends`: model name -> `ModelBackend` (deployments/backends.py), observed or not."""
        self.backends = backends
        self.timeouts = timeouts
        self.stalls = stall_timeouts or {}
        self.down = down if down is not None else {}
        self.watch = watch
        self.loads = loads if loads is not None else TierLoads({})

    async def why_down(self, model: str) -> str | None:
        """Why a tier is not serving now (left out at start, or its Serve application is not
        running), or None: the chain calls it."""
        why = self.down.get(model)
        if why is None and self.watch is not None and model in self.watch:  # others: no await on the hot path
            why = await self.watch.check(model)
        return why

    async def serving(self, candidates: list[str]) -> tuple[list[str], list[str]]:
        """`auto`'s candidates without the tiers that are down (and those); all of them when
        every one is down (the chain then says why, in a 503)."""
        down = [c for c in candidates if await self.why_down(c) is not None]
        kept = [c for c in candidates if c not in down]
        return (kept, down) if kept else (candidates, [])

    async def all_down(self) -> dict[str, str]:
        """Every tier not serving now, with why (readiness)."""
        watched = await self.watch.refresh() if self.watch is not None else {}
        return {**watched, **self.down}
