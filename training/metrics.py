"""Routing metrics.

Two models (RouteLLM, Ong et al. 2024): a router gives each prompt a score (for learned routers
`q_strong - q_weak`); sweeping a threshold over the score's quantiles (default 10 bins, as
RouteLLM's `--num-results`: 11 thresholds, `score >= t`, the last one `score > t`) yields points
(% calls to the strong model, mean quality). Then
  - PGR = (quality - q_weak) / (q_strong - q_weak), where q_* are the single models' mean quality;
  - APGR = (AUC - weak AUC) / (strong AUC - weak AUC) over the swept % range (trapezoid rule);
  - CPT(x%) = smallest % strong calls at which the (linearly interpolated) curve reaches PGR x,
    or None when the sweep never reaches it (with the reason).
The random router scores prompts uniformly at random (mean over seeds; expectation 0.5 APGR).

Many models (RouterBench, Hu et al. 2024): sweeping the cost weight of `router.policy` gives
(mean cost, mean quality) points; AIQ is the area under their non-decreasing upper convex hull
over the cost range of the single models, divided by that range (the hull is extended flat
beyond its end points). Single models, the random router, the single-model hull (RouterBench's
zero router) and the oracle (true scores, same sweep) are reported alongside.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router.policy import choose_batch

DEFAULT_COST_WEIGHTS = np.concatenate([[0.0], np.logspace(-3, 2, 40)])


# ---------------- two-model mode ----------------
def threshold_curve(scores: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray, num_thresholds: int = 10) -> list[tuple[float, float]]:
    """[(strong call fraction, mean quality)] over quantile thresholds of the score, as RouteLLM."""
    s = np.asarray(scores, dtype=np.float64)
    edges = np.quantile(s, np.linspace(0.0, 1.0, num_thresholds + 1))
    points = []
    for i, t in enumerate(edges):
        sel = s >= t if i != len(edges) - 1 else s > t
        points.append((float(sel.mean()), float(np.where(sel, q_strong, q_weak).mean())))
    return points


def decision_curve(strong_decisions: list[np.ndarray], q_strong: np.ndarray, q_weak: np.ndarray) -> list[tuple[float, float]]:
    """The curve of a router given as explicit decisions (one boolean array per setting)."""
    return [(float(d.mean()), float(np.where(d, q_strong, q_weak).mean())) for d in map(np.asarray, strong_decisions)]


def _sorted(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted(points)
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def apgr(points: list[tuple[float, float]], strong_quality: float, weak_quality: float) -> tuple[float | None, str | None]:
    x, y = _sorted(points)
    span = x[-1] - x[0]
    gap = strong_quality - weak_quality
    if span <= 0:
        return None, "undefined: the router's strong-call share never changes over the sweep"
    if gap == 0:
        return None, "undefined: strong and weak models have the same mean quality"
    auc = float(np.trapezoid(y, x))
    return (auc - weak_quality * span) / (gap * span), None


def cpt(points: list[tuple[float, float]], strong_quality: float, weak_quality: float, pgr: float) -> tuple[float | None, str | None]:
    """% calls to the strong model needed to reach `pgr` of the quality gap."""
    gap = strong_quality - weak_quality
    if gap <= 0:
        return None, "undefined: the strong model is not better than the weak model on this data"
    x, y = _sorted(points)
    target = weak_quality + pgr * gap
    if y[0] >= target - 1e-12:
        return 100.0 * float(x[0]), None
    for i in range(len(x) - 1):
        if y[i] < target <= y[i + 1] + 1e-12:
            frac = x[i] + (target - y[i]) * (x[i + 1] - x[i]) / (y[i + 1] - y[i])
            return 100.0 * float(frac), None
    return None, f"undefined: the router never reaches {pgr:.0%} PGR over its threshold sweep (max strong share {100 * x.max():.1f}%)"


def curve_metrics(points: list[tuple[float, float]], strong_quality: float, weak_quality: float) -> dict[str, Any]:
    a, a_why = apgr(points, strong_quality, weak_quality)
    c50, c50_why = cpt(points, strong_quality, weak_quality, 0.5)
    c80, c80_why = cpt(points, strong_quality, weak_quality, 0.8)
    out: dict[str, Any] = {"apgr": a, "cpt50": c50, "cpt80": c80}
    reasons = {k: v for k, v in {"apgr": a_why, "cpt50": c50_why, "cpt80": c80_why}.items() if v}
    if reasons:
        out["undefined"] = reasons
    return out


def random_router_metrics(q_strong: np.ndarray, q_weak: np.ndarray, num_thresholds: int = 10, seeds: int = 20) -> dict[str, Any]:
    qs, qw = float(np.mean(q_strong)), float(np.mean(q_weak))
    runs = [
        curve_metrics(threshold_curve(np.random.default_rng(s).random(len(q_strong)), q_strong, q_weak, num_thresholds), qs, qw)
        for s in range(seeds)
    ]
    out: dict[str, Any] = {}
    for key in ("apgr", "cpt50", "cpt80"):
        vals = [r[key] for r in runs if r[key] is not None]
        out[key] = float(np.mean(vals)) if vals else None
    apgrs = [r["apgr"] for r in runs if r["apgr"] is not None]
    out["apgr_std"] = float(np.std(apgrs)) if len(apgrs) > 1 else None  # the noise floor of one dataset
    out["seeds"] = seeds
    return out


def bootstrap_apgr(scores: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray, num_thresholds: int = 10,
                   resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """The router's APGR over prompt resamples (with replacement): how much of a number is the
    sample. On a few hundred prompts where the two models rarely disagree it is several points,
    as large as the gaps between routers (docs/benchmarks.md)."""
    s, qs, qw = (np.asarray(a, dtype=np.float64) for a in (scores, q_strong, q_weak))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(resamples):
        i = rng.integers(0, len(s), len(s))
        a = curve_metrics(threshold_curve(s[i], qs[i], qw[i], num_thresholds), float(qs[i].mean()), float(qw[i].mean()))["apgr"]
        if a is not None:
            vals.append(a)
    if len(vals) < 2:
        return {"apgr_se": None, "apgr_ci95": None, "resamples": resamples}
    lo, hi = np.quantile(vals, [0.025, 0.975])
    return {"apgr_se": float(np.std(vals)), "apgr_ci95": [float(lo), float(hi)], "resamples": resamples}


def two_model_report(
    scores: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray, num_thresholds: int = 10, bootstrap: int = 0
) -> dict[str, Any]:
    """Router, random and oracle curves; `bootstrap` > 0 adds the router's APGR standard error and
    95% interval over that many prompt resamples."""
    qs, qw = float(np.mean(q_strong)), float(np.mean(q_weak))
    points = threshold_curve(scores, q_strong, q_weak, num_thresholds)
    oracle = threshold_curve(np.asarray(q_strong) - np.asarray(q_weak), q_strong, q_weak, num_thresholds)
    spread = bootstrap_apgr(scores, q_strong, q_weak, num_thresholds, bootstrap) if bootstrap > 0 else {}
    return {
        "n": int(len(q_strong)),
        "strong_quality": qs,
        "weak_quality": qw,
        "router": {**curve_metrics(points, qs, qw), **spread,
                   "curve": [{"strong_pct": 100 * x, "quality": y} for x, y in sorted(points)]},
        "random": random_router_metrics(q_strong, q_weak, num_thresholds),
        "oracle": curve_metrics(oracle, qs, qw),
        "num_thresholds": num_thresholds,
    }


# ---------------- multi-model mode ----------------
def upper_hull(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing upper convex hull of (cost, quality) points."""
    pts = sorted(set((float(c), float(q)) for c, q in points))
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # hull[-1] not above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    # keep the rising part: beyond the best quality the hull stays flat
    best = int(np.argmax([q for _, q in hull]))
    hull = hull[: best + 1]
    return np.array([c for c, _ in hull]), np.array([q for _, q in hull])


def aiq(points: list[tuple[float, float]], c_lo: float, c_hi: float, grid: int = 2001) -> float:
    hx, hy = upper_hull(points)
    if c_hi <= c_lo:
        return float(hy.max())
    xs = np.linspace(c_lo, c_hi, grid)
    return float(np.trapezoid(np.interp(xs, hx, hy), xs) / (c_hi - c_lo))


def _point(choice: np.ndarray, S: np.ndarray, C: np.ndarray) -> tuple[float, float]:
    rows = np.arange(len(choice))
    return float(C[rows, choice].mean()), float(S[rows, choice].mean())


def multi_model_report(
    predicted: np.ndarray,
    S: np.ndarray,
    C: np.ndarray,
    labels: list[str],
    router_costs: np.ndarray | None = None,
    cost_weights: np.ndarray = DEFAULT_COST_WEIGHTS,
    seed: int = 0,
) -> dict[str, Any]:
    """predicted/S/C are [n, m]; router_costs [m] is the per-call cost the router believes."""
    belief = np.nanmean(C, axis=0) if router_costs is None else np.where(np.isnan(router_costs), np.nanmean(C, axis=0), router_costs)
    singles = {lab: (float(C[:, j].mean()), float(S[:, j].mean())) for j, lab in enumerate(labels)}
    c_lo = min(c for c, _ in singles.values())
    c_hi = max(c for c, _ in singles.values())
    curve, oracle_pts = [], []
    for w in cost_weights:
        c, q = _point(choose_batch(predicted, belief, w), S, C)
        curve.append({"cost_weight": float(w), "cost": c, "quality": q})
        oracle_pts.append(_point(choose_batch(S, C, w), S, C))
    rng = np.random.default_rng(seed)
    random_pt = _point(rng.integers(0, len(labels), size=len(S)), S, C)
    best_label = max(singles, key=lambda k: (singles[k][1], -singles[k][0]))
    router_pts = [(p["cost"], p["quality"]) for p in curve]
    return {
        "n": int(len(S)),
        "models": labels,
        "cost_range": [c_lo, c_hi],
        "router": {"aiq": aiq(router_pts, c_lo, c_hi), "max_quality": max(q for _, q in router_pts), "curve": curve},
        "oracle": {"aiq": aiq(oracle_pts, c_lo, c_hi), "quality": oracle_pts[0][1], "cost": oracle_pts[0][0]},
        "single_models": {k: {"cost": c, "quality": q} for k, (c, q) in singles.items()},
        "best_single_model": {"model": best_label, "cost": singles[best_label][0], "quality": singles[best_label][1]},
        "zero_router_aiq": aiq(list(singles.values()), c_lo, c_hi),
        "random": {"cost": random_pt[0], "quality": random_pt[1]},
    }
