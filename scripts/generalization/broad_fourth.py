"""Broad protocol, fourth pass (docs/benchmarks.md): can anything trained on more than RouterBench
beat the RouterBench-only default on the pair the gateway routes by default?

- `standardise`: the `task_difficulty` family trained on the permitted sources with its target
  standardised per task or per source (per source keeps the between-task differences inside a
  source, e.g. code harder than trivia), on all sources per source, and the mean of the default's
  and per-task standardised z-scored scores (`blend`).
- `discrimination`: a ridge on each prompt's IRT-style discrimination (the slope of its scores on
  the models' ability across its source): "does a stronger model gain here", a target every
  source has, whatever its pair.

Both print the 9 gpt-4 vs mixtral tasks leave-one-task-out (paired gain over the default) and the
gpt-4 vs mixtral sources pooled, leave-one-source-out.

    python scripts/generalization/broad_fourth.py standardise --data .doka/data/combined_all.jsonl
    python scripts/generalization/broad_fourth.py discrimination --data .doka/data/combined_all.jsonl
"""

from __future__ import annotations

import argparse
from typing import Callable

import numpy as np

from router.families import get_family
from training.broad_data import PERMITTED, STRONG, WEAK, column, fit_ridge, held_out_folds, scoring_pair, task_weights
from training.dataset import load_jsonl
from training.embeddings import embed_texts
from training.metrics import two_model_report

Scorer = Callable[[np.ndarray], np.ndarray]  # features -> routing score for gpt-4 vs mixtral


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["standardise", "discrimination"])
    ap.add_argument("--data", default=".doka/data/combined_all.jsonl")
    ap.add_argument("--featurizer", default="minilm-l6-v2-static+stats")
    args = ap.parse_args()
    ds = load_jsonl(args.data)
    X = embed_texts(ds.prompts, args.featurizer, progress=False).astype(np.float64)
    src, task, S = column(ds, "source"), column(ds, "task"), ds.scores
    js, jw = ds.labels.index(STRONG), ds.labels.index(WEAK)

    def family(name: str, rows: np.ndarray, groups: np.ndarray | None) -> Scorer:
        fam = get_family(name)
        st = fam.fit(X[rows], S[rows], dict(fam.defaults), False, **({"groups": groups} if fam.grouped else {}))
        return lambda Z: (lambda P: P[:, js] - P[:, jw])(fam.predict(st, Z))

    def permitted(rows: np.ndarray) -> np.ndarray:
        return rows[np.isin(src[rows], PERMITTED)]

    def discrimination(rows: np.ndarray) -> Scorer:
        y = np.full(len(rows), np.nan)
        for s in set(src[rows]):
            m = np.flatnonzero(src[rows] == s)
            B = S[rows[m]]
            with np.errstate(invalid="ignore"), np.testing.suppress_warnings() as sup:
                sup.filter(RuntimeWarning)
                ability = np.nanmean(B, axis=0)
            ok = ~np.isnan(ability)
            a = (ability - ability[ok].mean()) / (ability[ok].std() + 1e-9)
            for i, row in zip(m, B):
                lab = ~np.isnan(row) & ok
                if lab.sum() >= 3:
                    aa, ss = a[lab] - a[lab].mean(), row[lab] - row[lab].mean()
                    y[i] = aa @ ss / (aa @ aa)
        keep = ~np.isnan(y)
        coef, b = fit_ridge(X[rows[keep]], y[keep], 10.0, task_weights(task[rows[keep]]))
        return lambda Z: Z @ coef + b

    def default(rows: np.ndarray) -> Scorer | None:  # today's bootstrap: RouterBench rows only
        rb = rows[src[rows] == "routerbench"]
        return family("difficulty", rb, None) if len(rb) else None

    if args.what == "discrimination":
        designs: dict[str, Callable[[np.ndarray], Scorer | None]] = {"default": default, "discrimination": discrimination}
    else:
        def blend(rows: np.ndarray) -> Scorer | None:
            a, b = default(rows), family("task_difficulty", permitted(rows), task[permitted(rows)])
            if a is None:
                return None
            ref = X[permitted(rows)[:5000]]  # each score's spread on training prompts, never the held-out ones
            sa, sb = a(ref).std(), b(ref).std()
            return lambda Z: a(Z) / sa + b(Z) / sb

        designs = {"default": default,
                   "permitted, per task": lambda r: family("task_difficulty", permitted(r), task[permitted(r)]),
                   "permitted, per source": lambda r: family("task_difficulty", permitted(r), src[permitted(r)]),
                   "all sources, per source": lambda r: family("task_difficulty", r, src[r]),
                   "blend": blend}

    def apgr(score: np.ndarray, rows: np.ndarray, bootstrap: int = 0) -> dict:
        return two_model_report(score, S[rows, js], S[rows, jw], bootstrap=bootstrap)["router"]

    res: dict[str, list[float]] = {k: [] for k in designs}
    for f in held_out_folds(ds, "task"):
        fits: dict[str, Scorer | None] = {}
        for t in sorted(set(task[f.test])):
            rows = f.test[task[f.test] == t]
            if scoring_pair(ds, rows) != (STRONG, WEAK):
                continue
            rows = rows[~np.isnan(S[rows, js]) & ~np.isnan(S[rows, jw])]
            for k, make in designs.items():
                if k not in fits:
                    fits[k] = make(f.train)
                res[k].append(apgr(fits[k](X[rows]), rows)["apgr"] if fits[k] else np.nan)
            print(t, " | ".join(f"{k} {v[-1]:.3f}" for k, v in res.items()), flush=True)
    ref = np.array(res["default"])
    print("\nleave-one-task-out, the 9 gpt-4 vs mixtral tasks:")
    for k, v in res.items():
        d = np.array(v) - ref
        n = int((~np.isnan(d)).sum())
        print(f"  {k:26s} median {np.nanmedian(v):.3f} mean {np.nanmean(v):.3f}  gain over default "
              f"{np.nanmean(d):+.3f} +- {np.nanstd(d, ddof=1) / np.sqrt(n):.3f} ({int(np.nansum(d > 0))}/{n} wins)")
    both = ~np.isnan(S[:, js]) & ~np.isnan(S[:, jw])
    prompts = np.array(ds.prompts, dtype=object)
    print("\nleave-one-source-out, pooled (APGR +- bootstrap SE):")
    for held in sorted(set(src[both])):
        test = np.flatnonzero((src == held) & both)
        seen = set(prompts[test])
        train = np.flatnonzero((src != held) & np.array([p not in seen for p in prompts]))
        line = []
        for k, make in designs.items():
            fit = make(train)
            if fit:
                r = apgr(fit(X[test]), test, bootstrap=100)
                line.append(f"{k} {r['apgr']:.3f} +- {r['apgr_se']:.3f}")
        print(f"  {held} (n={len(test)}): " + " | ".join(line))


if __name__ == "__main__":
    main()
