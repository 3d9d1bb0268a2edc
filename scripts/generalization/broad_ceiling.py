"""Why the broad protocol stays near 0.5 (docs/benchmarks.md, "Broad protocol, second pass").

1. How well leave-one-task-out ridge predicts a held-out task's within-task difficulty (Pearson r
   with the per-task standardised mean score), per feature set.
2. Ceilings with the *true* difficulty of each held-out task (the mean score of the models other
   than the scored pair): routing hardest-first, with each pair's true line in it, and a quadratic.

    python scripts/generalization/broad_ceiling.py --data .doka/data/combined_all.jsonl
"""

from __future__ import annotations

import argparse

import numpy as np

from router.featurizer import STATS_MEAN, STATS_SCALE, prompt_stats
from training.broad_data import fit_ridge, task_weights, column, difficulty_target, held_out_folds, scoring_pair
from training.dataset import load_jsonl
from training.embeddings import embed_texts
from training.metrics import two_model_report


def correlations(ds, X, alpha: float) -> np.ndarray:
    tasks = column(ds, "task")
    rs = []
    for f in held_out_folds(ds, "task"):
        coef, b = fit_ridge(X[f.train], difficulty_target(ds, f.train), alpha, task_weights(tasks[f.train]))
        for t in sorted(set(tasks[f.test])):
            r = f.test[tasks[f.test] == t]
            rs.append(np.corrcoef(X[r] @ coef + b, difficulty_target(ds, r))[0, 1])
    return np.array(rs)


def ceilings(ds) -> dict[str, float]:
    tasks = column(ds, "task")
    out: dict[str, list[float]] = {"hardest first": [], "true line per model": [], "true quadratic per model": []}
    for t in sorted(set(tasks)):
        rows = np.flatnonzero(tasks == t)
        s, w = scoring_pair(ds, rows)
        js, jw = ds.labels.index(s), ds.labels.index(w)
        keep = rows[~np.isnan(ds.scores[rows, js]) & ~np.isnan(ds.scores[rows, jw])]
        if len(keep) < 30:
            continue
        qs, qw = ds.scores[keep, js], ds.scores[keep, jw]
        if qs.mean() == qw.mean():
            continue
        others = ds.scores[keep].copy()
        others[:, [js, jw]] = np.nan
        with np.errstate(all="ignore"):
            e = np.nanmean(others, axis=1)
        e = np.where(np.isnan(e), np.nanmean(e), e)
        line = np.polyfit(e, qs, 1)[0] - np.polyfit(e, qw, 1)[0]
        quad = np.polyval(np.polyfit(e, qs, 2), e) - np.polyval(np.polyfit(e, qw, 2), e)
        for k, score in (("hardest first", -e), ("true line per model", line * e), ("true quadratic per model", quad)):
            out[k].append(two_model_report(score, qs, qw, bootstrap=0)["router"]["apgr"])
    return {k: float(np.median(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".doka/data/combined_all.jsonl")
    args = ap.parse_args()
    ds = load_jsonl(args.data)
    mini = embed_texts(ds.prompts, "minilm-l6-v2@t64", progress=False).astype(np.float64)
    stats = ((prompt_stats(ds.prompts) - STATS_MEAN) * STATS_SCALE).astype(np.float64)
    static = embed_texts(ds.prompts, "minilm-l6-v2-static+stats", progress=False).astype(np.float64)
    for name, X, alpha in [("MiniLM, alpha 10", mini, 10.0), ("MiniLM, alpha 100", mini, 100.0),
                           ("MiniLM+stats, alpha 100", np.hstack([mini, stats]), 100.0),
                           ("static+stats, alpha 10", static, 10.0), ("stats only, alpha 1", stats, 1.0)]:
        r = correlations(ds, X, alpha)
        print(f"{name:26s} held-out difficulty r: median {np.median(r):+.3f}, positive on {int((r > 0).sum())}/{len(r)}")
    for k, v in ceilings(ds).items():
        print(f"true difficulty, {k}: median APGR {v:.3f}")


if __name__ == "__main__":
    main()
