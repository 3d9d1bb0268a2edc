"""Turning predicted quality and costs into one choice.

Rule: among allowed candidates, maximise

    score_i = quality_i - cost_weight * cost_i / max(cost_j over allowed j)

i.e. cost is normalised to [0, 1] by the most expensive allowed candidate, so `cost_weight` is
"how much predicted quality (0..1) one is willing to give up to go from the dearest model to a
free one". `cost_weight = 0` picks the best predicted quality; ties go to the cheaper model,
then to the lower index. Costs that are all zero (or unknown, NaN -> 0) leave quality alone.
"""

from __future__ import annotations

import numpy as np


def scores(quality: np.ndarray, costs: np.ndarray, cost_weight: float) -> np.ndarray:
    """The policy score per candidate (no masking); vectorised over a leading batch axis."""
    q = np.asarray(quality, dtype=np.float64)
    c = np.nan_to_num(np.asarray(costs, dtype=np.float64), nan=0.0)
    top = c.max(axis=-1, keepdims=True)
    norm = np.divide(c, top, out=np.zeros_like(c), where=top > 0)
    return q - float(cost_weight) * norm


def choose(
    quality: np.ndarray, costs: np.ndarray, cost_weight: float, allowed: np.ndarray | None = None
) -> tuple[int, float]:
    """Index of the chosen candidate and its policy score.

    One decision per `auto` request over a handful of candidates: plain floats, because a dozen
    numpy calls on 3-element arrays cost ~100 us here and this loop ~5 us (same result;
    `tests/test_router_policy.py` checks it against `choose_batch`).
    """
    if allowed is None and isinstance(quality, np.ndarray) and isinstance(costs, np.ndarray) and quality.ndim == 1:
        q, c = quality.tolist(), costs.tolist()
        if len(q) == len(c) and q and not any(x != x for x in q) and cost_weight >= 0:
            return _choose_small(q, [0.0 if x != x else x for x in c], float(cost_weight))
    return _choose_array(quality, costs, cost_weight, allowed)


def _choose_small(q: list[float], c: list[float], w: float) -> tuple[int, float]:
    top = max(c)
    s = [qi - w * ci / top for qi, ci in zip(q, c)] if top > 0 else list(q)
    best = max(s)
    idx = min((i for i, v in enumerate(s) if abs(v - best) <= 1e-12), key=lambda i: (c[i], i))
    return idx, s[idx]


def _choose_array(
    quality: np.ndarray, costs: np.ndarray, cost_weight: float, allowed: np.ndarray | None = None
) -> tuple[int, float]:
    q = np.asarray(quality, dtype=np.float64).reshape(-1)
    c = np.asarray(costs, dtype=np.float64).reshape(-1)
    if q.shape != c.shape:
        raise ValueError(f"quality has {q.size} entries but costs has {c.size}")
    if cost_weight < 0:
        raise ValueError("cost_weight must be >= 0")
    mask = np.ones(q.size, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool).reshape(-1)
    if mask.shape != q.shape:
        raise ValueError(f"allowed has {mask.size} entries, expected {q.size}")
    if not mask.any():
        raise ValueError("no allowed candidate to choose from")
    c_allowed = np.where(mask, np.nan_to_num(c, nan=0.0), 0.0)
    s = scores(q, c_allowed, cost_weight)
    s = np.where(mask, s, -np.inf)
    best = s.max()
    ties = np.flatnonzero(np.isclose(s, best, rtol=0, atol=1e-12) & mask)
    idx = int(ties[np.argmin(c_allowed[ties])]) if ties.size > 1 else int(ties[0])
    return idx, float(s[idx])


def choose_batch(quality: np.ndarray, costs: np.ndarray, cost_weight: float) -> np.ndarray:
    """`choose` for every row of quality [n, m] with shared or per-row costs; returns indices."""
    q = np.asarray(quality, dtype=np.float64)
    c = np.broadcast_to(np.nan_to_num(np.asarray(costs, dtype=np.float64), nan=0.0), q.shape)
    s = scores(q, c, cost_weight)
    # tie-break towards the cheaper model: subtract a negligible cost-proportional amount
    top = c.max(axis=-1, keepdims=True)
    s = s - 1e-9 * np.divide(c, top, out=np.zeros_like(c), where=top > 0)
    return s.argmax(axis=1)
