"""Broad routing evaluation over the combined data (training.sources): leave-one-task-out over
every task and leave-one-source-out, each held-out task scored on gpt-4-1106-preview vs
mixtral-8x7b-chat where it labels both, else its own strongest vs weakest model; `pooled` scores
each held-out source as one mixed set, as MMLU or MT-Bench mix subjects.

Designs are small functions `fit(X, ds) -> predict(X) -> score` (higher = call the strong
model). Hyper-parameters are chosen only inside the training fold (grouped by task), never on
the fold being scored. Prompts are embedded once through `training.embeddings.embed_texts`
(cached on disk by text hash), the same featurizer call the served router makes.

    python -m training.broad --data .doka/data/combined_all.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from training.broad_data import BROAD_FEATURIZER_ID, Fold, column, held_out_folds, scoring_pair
from training.broad_designs import (DESIGNS, FOLD_FITS, PAIR_FREE, contrastive_or_difficulty, pair_score, shipped_fit,
                                   shipped_labels)
from training.dataset import Dataset, load_jsonl
from training.evaluate import constant_scores
from training.metrics import two_model_report


def evaluate_folds(X: np.ndarray, ds: Dataset, folds: list[Fold], design: str, bootstrap: int = 200,
                   pooled: bool = False) -> list[dict]:
    """Fit on each fold's training rows (once per scoring pair), score every task of the held-out
    rows on its own pair: a leave-one-source-out fold yields one row per task of that source.
    `pooled`: the fold's held-out rows are scored as one mixed set instead (`<fold> (pooled)`), as
    the benchmarks routers are judged on mix subjects and categories (MMLU, MT-Bench): ranking
    *between* kinds of prompt counts there, and a per-task score cannot see it."""
    tasks = column(ds, "task")
    if pooled:
        tasks = np.array(tasks, dtype=object)
        for f in folds:
            tasks[f.test] = f"{f.name} (pooled)"
    out = []
    for f in folds:
        fitted: dict[tuple[str, str], Callable] = {}
        pair_free = untrainable = None
        fold_fit = None
        for task in sorted(set(tasks[f.test])):
            rows = f.test[tasks[f.test] == task]
            strong, weak = scoring_pair(ds, rows)
            js, jw = ds.labels.index(strong), ds.labels.index(weak)
            keep = rows[~np.isnan(ds.scores[rows, js]) & ~np.isnan(ds.scores[rows, jw])]
            qs, qw = ds.scores[keep, js], ds.scores[keep, jw]
            if len(keep) < 30 or qs.mean() == qw.mean():
                continue
            if (strong, weak) not in fitted:
                if design in FOLD_FITS:
                    if fold_fit is None:
                        fold_fit = FOLD_FITS[design](X, ds, f.train)
                        print(f"{design}: fold {f.name}: {fold_fit.config}", flush=True)
                    fitted[(strong, weak)] = contrastive_or_difficulty(fold_fit, X, ds, f.train, strong, weak, True)
                elif design in PAIR_FREE:
                    if pair_free is None and not untrainable:
                        pair_free = shipped_fit(design, X, ds, f.train)
                        untrainable = pair_free is None
                        labelled = shipped_labels(design, ds, f.train)
                    if untrainable:  # nothing of its sources left in training: the fold is not scored
                        print(f"{design}: fold {f.name} leaves it no training rows; not scored", flush=True)
                        break
                    unknown = [m for m, j in ((strong, js), (weak, jw)) if not labelled[j]]
                    if unknown:  # an artifact ranks only models it was trained on: nothing to measure here
                        out.append({"fold": str(f.name), "held_out": str(task), "n": int(len(keep)),
                                    "pair": f"{strong} vs {weak}", "apgr": None,
                                    "unscored": f"no training row of the fold labels {', '.join(unknown)}"})
                        continue
                    fitted[(strong, weak)] = pair_score(pair_free, ds, strong, weak)
                else:
                    fitted[(strong, weak)] = DESIGNS[design](X, ds, f.train, strong, weak)
            score = fitted[(strong, weak)](X[keep])
            rep = two_model_report(score, qs, qw, bootstrap=bootstrap)
            r = rep["router"]
            if r["apgr"] is None:
                continue
            out.append({"fold": str(f.name), "held_out": str(task), "n": int(len(keep)), "pair": f"{strong} vs {weak}",
                        "apgr": r["apgr"], "se": r.get("apgr_se"), "ci95": r.get("apgr_ci95"),
                        "score_std": float(np.std(score)), "constant": constant_scores(score),
                        "random": rep["random"]["apgr"]})
    return out


def summary(rows: list[dict]) -> dict:
    """Median, mean and worst over the scored rows; `unscored` names the held-out tasks a shipped
    design could not rank (its training rows never label their pair), which are not counted as 0.5."""
    unscored = [str(r["held_out"]) for r in rows if r.get("unscored")]
    rows = [r for r in rows if r["apgr"] is not None]
    a = np.array([r["apgr"] for r in rows])
    if not len(a):
        return {"median": float("nan"), "mean": float("nan"), "worst": float("nan"), "folds": 0, "tasks_200_ci_below_0.5": [],
                "constant_scores": [], "unscored": unscored}
    big_below = [str(r["held_out"]) for r in rows if r["n"] >= 200 and r["ci95"] and r["ci95"][1] < 0.5]
    return {"median": float(np.median(a)), "mean": float(a.mean()), "worst": float(a.min()), "folds": len(a),
            "tasks_200_ci_below_0.5": big_below, "constant_scores": [str(r["held_out"]) for r in rows if r.get("constant")],
            "unscored": unscored}


def paired_difference(a: list[dict], b: list[dict]) -> dict:
    """Design a minus design b over the held-out tasks both scored: mean per-task APGR gain, its
    SE over tasks, a 95% interval and the win count; the bar for "beats" (a gain whose interval
    excludes 0), since the medians of near-random designs move by noise."""
    bb = {r["held_out"]: r["apgr"] for r in b if r["apgr"] is not None}
    d = np.array([r["apgr"] - bb[r["held_out"]] for r in a if r["apgr"] is not None and r["held_out"] in bb])
    if not len(d):
        return {"tasks": 0}
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"tasks": int(len(d)), "mean_gain": float(d.mean()), "se": se,
            "ci95": [float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se)], "wins": int((d > 0).sum())}


def markdown(rows: list[dict]) -> str:
    lines = ["| held out | n | pair | APGR ± SE | 95% interval |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["apgr"] is None:
            lines.append(f"| {r['held_out']} | {r['n']} | {r['pair']} | not scored: {r.get('unscored', '')} | |")
            continue
        ci = f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r["ci95"] else "n/a"
        lines.append(f"| {r['held_out']} | {r['n']} | {r['pair']} | {r['apgr']:.3f} ± {r['se'] or 0:.3f} | {ci} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=".doka/data/combined_all.jsonl")
    ap.add_argument("--designs", nargs="+", default=["difficulty"], choices=sorted(DESIGNS))
    ap.add_argument("--by", nargs="+", default=["task", "source"], choices=["task", "source", "pooled"],
                    help="leave-one-task-out, leave-one-source-out, or `pooled`: leave-one-source-out with each "
                         "held-out source scored as one mixed set (gpt-4 vs mixtral where it labels both)")
    ap.add_argument("--featurizer", default=BROAD_FEATURIZER_ID)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--out", default=".doka/bench/broad")
    ap.add_argument("--compare", nargs=2, metavar="RESULTS.json:PROTOCOL/DESIGN",
                    help="only compare two earlier runs' rows task by task (A minus B), e.g. "
                         ".doka/bench/b1/results.json:task/pairwise .doka/bench/b2/results.json:task/difficulty")
    args = ap.parse_args(argv)
    if args.compare:
        rows = []
        for spec in args.compare:
            path, key = spec.rsplit(":", 1)
            rows.append(json.loads(Path(path).read_text())[key]["folds"])
        print(json.dumps(paired_difference(*rows), indent=1))
        return 0
    from training.embeddings import embed_texts

    ds = load_jsonl(args.data)
    X = embed_texts(ds.prompts, args.featurizer, progress=False).astype(np.float64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for by in args.by:
        folds = held_out_folds(ds, "source" if by == "pooled" else by)
        for d in args.designs:
            rows = evaluate_folds(X, ds, folds, d, args.bootstrap, pooled=by == "pooled")
            s = summary(rows)
            results[f"{by}/{d}"] = {"summary": s, "folds": rows}
            print(f"\n## {'leave-one-source-out, pooled' if by == 'pooled' else f'leave-one-{by}-out'}, {d}: median {s['median']:.3f}, mean {s['mean']:.3f}, worst "
                  f"{s['worst']:.3f} over {s['folds']} folds; 200+ prompts with 95% CI below 0.5: "
                  f"{s['tasks_200_ci_below_0.5'] or 'none'}; (nearly) constant scores on: "
                  f"{s['constant_scores'] or 'none'}; not scored (pair unknown to it): "
                  f"{s['unscored'] or 'none'}\n\n{markdown(rows)}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
