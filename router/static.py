"""Static routing strategies for `auto`: no model, no training, always available.

They are the default until a trained router artifact exists, and the fallback when the
learned router cannot answer. Both are plain classes (no Ray) so they are cheap to test and
can run inside any deployment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Choice:
    model: str
    score: float
    reason: str


class StaticStrategy(Protocol):
    name: str

    def choose(self, candidates: list[str]) -> Choice: ...


class WeightedRoundRobin:
    """Smooth weighted round-robin (the nginx algorithm): spreads picks evenly by weight.

    With weights a=2, b=1 the sequence is a, b, a, a, b, a ... rather than a, a, b.
    """

    name = "weighted_round_robin"

    def __init__(self, weights: dict[str, float]) -> None:
        self._weights = {m: w for m, w in weights.items() if w > 0}
        self._current: dict[str, float] = {m: 0.0 for m in self._weights}

    def choose(self, candidates: list[str]) -> Choice:
        pool = [m for m in candidates if m in self._weights] or list(candidates)
        if not pool:
            raise ValueError("no candidate models to route to")
        total = sum(self._weights.get(m, 1.0) for m in pool)
        for m in pool:
            self._current[m] = self._current.get(m, 0.0) + self._weights.get(m, 1.0)
        best = max(pool, key=lambda m: self._current[m])
        self._current[best] -= total
        return Choice(best, self._weights.get(best, 1.0) / total, f"weight {self._weights.get(best, 1.0):g}/{total:g}")


class CheapestHealthy:
    """The cheapest candidate that has not failed recently.

    Price is the sum of input and output cost per token (app/pricing.py: an unpriced self-hosted
    model is free, any other unpriced model sorts last). `mark_failed` puts a model in
    cooldown for `cooldown_s`; if every candidate is cooling down the cheapest one is used.
    """

    name = "cheapest_healthy"

    def __init__(self, prices: dict[str, float], cooldown_s: float = 30.0) -> None:
        self._prices = dict(prices)
        self._cooldown_s = cooldown_s
        self._down_until: dict[str, float] = {}

    def mark_failed(self, model: str, now: float | None = None) -> None:
        self._down_until[model] = (now if now is not None else time.monotonic()) + self._cooldown_s

    def mark_ok(self, model: str) -> None:
        self._down_until.pop(model, None)

    def healthy(self, model: str, now: float | None = None) -> bool:
        until = self._down_until.get(model)
        return until is None or (now if now is not None else time.monotonic()) >= until

    def choose(self, candidates: list[str]) -> Choice:
        if not candidates:
            raise ValueError("no candidate models to route to")
        now = time.monotonic()
        ranked = sorted(candidates, key=lambda m: (self._prices.get(m, float("inf")), candidates.index(m)))
        healthy = [m for m in ranked if self.healthy(m, now)]
        best = (healthy or ranked)[0]
        price = self._prices.get(best, float("inf"))
        reason = f"price {price:g}/token" + ("" if healthy else ", all candidates cooling down")
        return Choice(best, -price if price != float("inf") else float("-inf"), reason)
