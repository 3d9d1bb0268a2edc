"""Tenth pass (docs/benchmarks.md): the in-distribution path on the final question. RouterBench's
ARC and Winogrande prompts share one few-shot head (1 distinct 200-character head in 1,019 / 887
prompts), so a whole-prompt embedding is mostly that head; the families that match prompts to
prompts (knn, mlp, ensemble: the `gated` family's familiar path) might do better on the question
alone. Selected by 5-fold cross-validation inside the train split (stratified by task), then
looked up once on the test split; the held-out-task rotations are unaffected (the gate sends none
of them there).

    PYTHONPATH=$PWD python scripts/generalization/cache_extra_features.py
    PYTHONPATH=$PWD:$PWD/scripts/generalization python scripts/generalization/final_question_in_dist.py
"""
import numpy as np

from common import E, Yte, Ytr, apgr, fitpred, ttr
from router.featurizer import STATS_MEAN, STATS_SCALE

whole = (np.load(E + "X_minilm-l6-v2-static+stats_tr.npy"), np.load(E + "X_minilm-l6-v2-static+stats_te.npy"))
last = tuple(np.hstack([np.load(E + f"X_last_{s}.npy"), (np.load(E + f"X_laststats_{s}.npy") - STATS_MEAN) * STATS_SCALE])
             for s in ("tr", "te"))
both = (np.hstack([whole[0], last[0]]), np.hstack([whole[1], last[1]]))
FEATS = {"whole prompt": whole, "final question": last, "whole + final": both}

rng = np.random.default_rng(0)
fold = np.empty(len(ttr), dtype=int)
for t in sorted(set(ttr)):  # stratified: each task spread over the 5 folds
    idx = np.flatnonzero(ttr == t)
    fold[rng.permutation(idx)] = np.arange(len(idx)) % 5


def cv(family: str, X: np.ndarray, params=None) -> float:
    score = np.empty(len(X))
    for k in range(5):
        score[fold == k] = fitpred(family, X[fold != k], Ytr[fold != k], X[fold == k], params)
    return apgr(score, Ytr)


for fname, (Xtr, Xte) in FEATS.items():
    for family, params in (("difficulty", None), ("knn", None), ("knn", {"n_neighbors": 100}), ("mlp", None),
                           ("ensemble", None), ("gated", None)):
        label = family + ("" if not params else f" {params}")
        print(f"{fname:14s} {label:32s} 5-fold CV (train) {cv(family, Xtr, params):.3f}   test "
              f"{apgr(fitpred(family, Xtr, Ytr, Xte, params), Yte):.3f}", flush=True)
