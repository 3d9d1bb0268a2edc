"""Learned routing decisions in gateway terms: predicted quality per artifact label -> one model.

A trained artifact speaks in *labels* (RouterBench model names, or whatever the training data
used); the gateway speaks in *model names*. `model_info.route_label` maps one to the other
(a model without one is its own label). `LearnedEngine` binds one loaded artifact to one config:

- candidates for `auto` = the allowed gateway models whose label the artifact knows;
- costs for the policy = the artifact's per-label mean cost per call when it has one for every
  candidate, else the config's per-token prices (the policy normalises costs by the dearest
  candidate, so only ratios matter and the two sources are never mixed in one decision);
- the choice itself is `router.policy.choose`.

No Ray and no I/O here: the router deployment batches `predict` and calls `decide` per request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from app.config import DokaConfig
from router.featurizer import runs_inline
from router.policy import choose
from router.runtime import LearnedRouter


class Scored(NamedTuple):
    quality: np.ndarray  # [n, n_labels]
    familiar: np.ndarray | None  # [n] bool: passed a gated artifact's novelty gate; None for other families

    def row(self, i: int) -> tuple[np.ndarray, bool | None]:
        return self.quality[i], None if self.familiar is None else bool(self.familiar[i])


@dataclass(frozen=True)
class Decision:
    model: str
    score: float
    quality: float
    reason: str


def label_of(cfg: DokaConfig, model: str) -> str:
    entry = cfg.model(model)
    return entry.model_info.route_label if entry and entry.model_info.route_label else model


class LearnedEngine:
    """One artifact bound to one config; immutable, so swapping engines is one assignment."""

    def __init__(self, router: LearnedRouter, cfg: DokaConfig) -> None:
        self.router = router
        self.version = router.version
        self.inline = runs_inline(router.featurizer)  # scoring may run on the event loop (RouterService)
        col = {label: i for i, label in enumerate(router.labels)}
        self.columns: dict[str, int] = {}
        for name in cfg.auto_candidates():
            label = label_of(cfg, name)
            if label in col:
                self.columns[name] = col[label]
        artifact_costs = dict(zip(router.labels, router.label_costs().tolist()))
        self._artifact_cost = {m: artifact_costs[label_of(cfg, m)] for m in self.columns}
        self._price: dict[str, float] = {}
        for m in self.columns:
            price = cfg.model(m).price  # type: ignore[union-attr]
            if price is not None:
                self._price[m] = price.per_token

    @property
    def models(self) -> list[str]:
        """Gateway models this artifact can score (auto candidates with a known label)."""
        return list(self.columns)

    def predict(self, prompts: list[str]) -> Scored:
        """[n, n_labels] predicted quality (the expensive part: embed + score), and for a gated
        artifact which prompts looked like its training data."""
        quality, familiar = self.router.predict_with_gate(prompts)
        return Scored(quality, familiar)

    def costs_for(self, models: list[str]) -> tuple[np.ndarray, str]:
        """Cost per candidate and where it came from (`artifact`, `config` or `none`)."""
        art = [self._artifact_cost.get(m) for m in models]
        if all(c is not None and not math.isnan(c) for c in art):
            return np.array(art, dtype=np.float64), "artifact"
        if all(m in self._price for m in models):
            return np.array([self._price[m] for m in models], dtype=np.float64), "config"
        return np.zeros(len(models)), "none"

    def decide(self, quality_row: np.ndarray, cost_weight: float, allowed: list[str]) -> Decision | None:
        """The choice among `allowed` (gateway names); None when the artifact knows none of them."""
        models = [m for m in allowed if m in self.columns]
        if not models:
            return None
        q = np.asarray(quality_row, dtype=np.float64)[[self.columns[m] for m in models]]
        costs, source = self.costs_for(models)
        idx, score = choose(q, costs, cost_weight)
        reason = (f"learned {self.version}: quality {q[idx]:.3f} of {len(models)} candidates, "
                  f"cost weight {cost_weight:g} ({source} costs)")
        return Decision(models[idx], score, float(q[idx]), reason)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "models": self.models, "labels": list(self.router.labels),
                "family": self.router.metadata.get("family")}
