"""What the router decided for one `auto` request, as one typed object from the router to the
ingress, the response headers, the spans, the metrics and the trace record.

Plain frozen dataclass (picklable): it crosses from the Router deployment to the ingress when
the router runs in its own replicas. `replace` makes the ingress's additions (a novel prompt's
cascade, a capability note) without mutating what the router returned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class RouteDecision:
    model: str  # the gateway model chosen (its chain is tried from there)
    strategy: str  # learned, weighted_round_robin, cheapest_healthy, router_unavailable
    score: float | None  # the chosen model's score (learned: utility; static: the strategy's)
    reason: str  # human-readable why (the x-doka-router header)
    artifact_version: str | None = None  # the learned artifact that decided, if any
    degraded: bool | None = None  # learned wanted but a fallback strategy answered; None: unknown
    familiar: bool | None = None  # a gated artifact: the prompt looked like its training data
    decision_ms: float | None = None  # time inside the router
    cascade: str | None = None  # set by the ingress: a novel prompt goes through this cascade

    def replace(self, **changes: object) -> RouteDecision:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
