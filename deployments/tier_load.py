"""How loaded the local vLLM tiers are, and which of them are full (Ray-free).

Why: a saturated vLLM deployment makes a request wait in its scheduler queue while a paid tier
sits idle. Each vLLM replica reports its scheduler's own counts (`DokaLLMServer.doka_load`:
vLLM's SchedulerStats num_waiting_reqs / num_running_reqs, the numbers behind
`vllm:num_requests_waiting`); each ingress replica polls them in the background every 0.5 s
(`LoadPoller`), never per request, and keeps the latest reading per vLLM replica (`TierLoads`).
A tier with `model_info.queue_limit` is full while its replicas' waiting requests add up to the
limit or more: chains skip it and `auto` leaves it out (app/request/plan.py, run.py), unless no other
tier is left, when the request queues there as it would without a limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

log = logging.getLogger("ray.serve")

POLL_INTERVAL_S = 0.5
POLL_TIMEOUT_S = 2.0  # a replica too busy to answer keeps its last reading until it goes stale
STALE_AFTER_S = 10.0  # a replica not heard from for this long (gone, scaled down) no longer counts

QUEUE_FULL = "queue_full"  # the route reason's word: `;skipped=<model>:queue_full`


@dataclass(frozen=True)
class Load:
    """One tier's (or one replica's) requests waiting in the scheduler queue and running."""

    waiting: int
    running: int
    source: str = "vllm"  # `vllm`: the scheduler's stats; `frontend`: the engine's unfinished requests


def parse_reading(raw: Any) -> tuple[str, Load]:
    """(replica id, Load) from a `doka_load` answer; ValueError for anything else."""
    if not isinstance(raw, dict):
        raise ValueError(f"load reading is not a mapping: {raw!r}")
    waiting, running = raw.get("waiting"), raw.get("running")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (waiting, running)):
        raise ValueError(f"load reading needs non-negative integer waiting/running: {raw!r}")
    return str(raw.get("replica") or ""), Load(waiting, running, str(raw.get("source") or "vllm"))


class TierLoads:
    """The latest reading per tier and replica, and the queue limits they are held against."""

    def __init__(self, limits: dict[str, int | None], stale_after_s: float = STALE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = {m: n for m, n in limits.items() if n is not None}
        self._stale = stale_after_s
        self._clock = clock
        self._readings: dict[str, dict[str, tuple[float, Load]]] = {}

    def record(self, model: str, replica: str, load: Load) -> None:
        self._readings.setdefault(model, {})[replica] = (self._clock(), load)

    def load(self, model: str) -> Load | None:
        """The tier's load summed over its replicas heard from lately; None: nothing known."""
        per = self._readings.get(model)
        if not per:
            return None
        now = self._clock()
        for replica in [r for r, (t, _) in per.items() if now - t > self._stale]:
            del per[replica]
        if not per:
            return None
        loads = [x for _, x in per.values()]
        sources = {x.source for x in loads}
        return Load(sum(x.waiting for x in loads), sum(x.running for x in loads),
                    sources.pop() if len(sources) == 1 else "mixed")

    def full(self, model: str) -> bool:
        """True while the tier has a queue limit and at least that many requests wait (an
        unknown load is not full: the tier's timeout and the chain still cover a dead tier)."""
        limit = self.limits.get(model)
        if limit is None:
            return False
        load = self.load(model)
        return load is not None and load.waiting >= limit

    def split(self, models: Iterable[str]) -> tuple[list[str], list[str]]:
        """(the models that may take a request, the full ones); when every one is full, all are
        kept: the request queues at the first rather than being refused."""
        models = list(models)
        if not self.limits:  # no tier has a queue limit: nothing to look up per request
            return models, []
        full = [m for m in models if self.full(m)]
        if not full or len(full) == len(models):
            return models, []
        return [m for m in models if m not in full], full

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per tier with a reading: waiting, running, source, queue_limit, full (readiness, console)."""
        out: dict[str, dict[str, Any]] = {}
        for model in sorted(self._readings):
            load = self.load(model)
            if load is None:
                continue
            out[model] = {"waiting": load.waiting, "running": load.running, "source": load.source,
                          "queue_limit": self.limits.get(model), "full": self.full(model)}
        return out


LoadSource = Callable[[], Awaitable[Any]]


class LoadPoller:
    """Asks every tier's load source every `interval_s` in one background task per ingress replica."""

    def __init__(self, sources: dict[str, LoadSource], loads: TierLoads, interval_s: float = POLL_INTERVAL_S,
                 timeout_s: float = POLL_TIMEOUT_S) -> None:
        self.sources = dict(sources)
        self.loads = loads
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._task: asyncio.Task | None = None

    async def poll_once(self) -> None:
        """One reading from each source; a failed or slow one records nothing (its last reading ages)."""
        names = list(self.sources)
        got = await asyncio.gather(*(asyncio.wait_for(self.sources[n](), self.timeout_s) for n in names),
                                   return_exceptions=True)
        for name, raw in zip(names, got):
            if isinstance(raw, BaseException):
                if isinstance(raw, asyncio.CancelledError):
                    raise raw
                log.debug("tier load: %s not read: %r", name, raw)
                continue
            try:
                replica, load = parse_reading(raw)
            except ValueError as e:
                log.warning("tier load: %s: %s", name, e)
                continue
            self.loads.record(name, replica, load)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the loop outlives any one bad round
                log.warning("tier load: poll failed: %r", e)
            await asyncio.sleep(self.interval_s)

    def ensure_started(self) -> None:
        """Start the loop in the running event loop (once); a no-op without sources or loop."""
        if self._task is not None or not self.sources:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


_GAUGES: dict[str, Any] = {}


def export_metrics(loads: TierLoads) -> None:
    """Set the /metrics gauges (prometheus_client's default registry) from the latest readings."""
    if not _GAUGES:
        from prometheus_client import Gauge

        _GAUGES["waiting"] = Gauge("doka_tier_queue_waiting",
                                   "requests waiting in a local vLLM tier's scheduler queue (all replicas)", ["model"])
        _GAUGES["running"] = Gauge("doka_tier_queue_running",
                                   "requests running in a local vLLM tier's engine (all replicas)", ["model"])
        _GAUGES["full"] = Gauge("doka_tier_queue_full",
                                "1 while a tier's waiting requests reach its model_info.queue_limit", ["model"])
    for model, row in loads.snapshot().items():
        _GAUGES["waiting"].labels(model).set(row["waiting"])
        _GAUGES["running"].labels(model).set(row["running"])
        _GAUGES["full"].labels(model).set(1 if row["full"] else 0)
