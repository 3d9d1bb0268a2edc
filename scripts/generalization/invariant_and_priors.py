"""Fourth pass (docs/benchmarks.md): untrained priors and sign-invariant feature selection.

1. Untrained priors, scored inside each task's *train* rows (nothing is fitted): prompt length,
   words, digit share, unique-word ratio, mean word length, and unsupervised "novelty" (mean
   cosine similarity to the k nearest prompts of the same task, negated) or atypicality (distance
   to the task centroid), on the static and the full transformer embedding.
2. Invariant features: keep the features whose within-task correlation with the target has the
   same sign in every training task and |z| >= zmin in each; score = their (unit or z-weighted)
   sum. Scored by common.run_t (inner leave-one-task-out for selection, then the test folds).

    PYTHONPATH=$PWD python scripts/generalization/cache_features.py minilm-l6-v2-static+stats minilm-l6-v2
    PYTHONPATH=$PWD python scripts/generalization/invariant_and_priors.py
"""
import numpy as np

from common import E, S, TASKS, W, Ytr, apgr, run_t, ttr
from training.dataset import load_jsonl

prompts = load_jsonl(".doka/data/routerbench/train.jsonl").prompts
FEATS = {fid: (np.load(E + f"X_{fid}_tr.npy"), np.load(E + f"X_{fid}_te.npy"))
         for fid in ("minilm-l6-v2-static+stats", "minilm-l6-v2")}


def per_task(values):
    return " ".join(f"{apgr(values[ttr == t], Ytr[ttr == t]):.3f}" for t in TASKS)


def unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def novelty(X, k):
    G = unit(X) @ unit(X).T
    np.fill_diagonal(G, -1)
    return -np.sort(G, axis=1)[:, -k:].mean(1)


print("untrained priors, APGR inside each task's train rows:", " / ".join(TASKS))
priors = {
    "log length": np.log([len(p) for p in prompts]),
    "words": np.array([len(p.split()) for p in prompts], dtype=float),
    "digit share": np.array([sum(c.isdigit() for c in p) / len(p) for p in prompts]),
    "unique-word ratio": np.array([len(set(p.lower().split())) / max(1, len(p.split())) for p in prompts]),
    "mean word length": np.array([np.mean([len(w) for w in p.split()]) for p in prompts]),
}
for name, v in priors.items():
    print(f"  {name:34s} {per_task(v)}")
for fid, (X, _) in FEATS.items():
    emb = X[:, :384]
    for k in (5, 20):
        v = np.zeros(len(emb))
        for t in TASKS:
            v[ttr == t] = novelty(emb[ttr == t], k)
        print(f"  novelty k={k:<2d} {fid:22s} {per_task(v)}")
    v = np.zeros(len(emb))
    for t in TASKS:
        m = ttr == t
        v[m] = -(unit(emb[m]) @ unit(emb[m]).mean(0))
    print(f"  atypical  {fid:25s} {per_task(v)}")


def target(Y, kind):
    if kind == "gap":
        return np.nan_to_num(Y[:, S] - Y[:, W])
    if kind == "strong-wins":
        return ((np.nan_to_num(Y[:, S]) > 0.5) & (np.nan_to_num(Y[:, W]) < 0.5)).astype(float)
    return np.nanmean(Y, axis=1)  # ease: routed the other way (hard -> strong)


def zcorr(X, y):
    Xc = (X - X.mean(0)) / (X.std(0) + 1e-9)
    yc = (y - y.mean()) / (y.std() + 1e-9)
    return (Xc * yc[:, None]).mean(0) * np.sqrt(len(y))


def invariant(kind, zmin, weight):
    def scorer(Xa, Ya, ta, Xb):
        y = target(Ya, kind)
        zs = np.array([zcorr(Xa[ta == t], y[ta == t]) for t in sorted(set(ta))])
        keep = (np.sign(zs) == np.sign(zs[0])).all(0) & (np.abs(zs).min(0) >= zmin)
        if not keep.any():
            return np.random.default_rng(0).random(len(Xb))
        w = np.sign(zs[0][keep]) if weight == "unit" else zs.mean(0)[keep]
        s = ((Xb[:, keep] - Xa[:, keep].mean(0)) / (Xa[:, keep].std(0) + 1e-9)) @ w
        return -s if kind == "ease" else s
    return scorer


for fid, (Xtr, Xte) in FEATS.items():
    print(f"invariant features on {fid}")
    for kind in ("gap", "strong-wins", "ease"):
        for zmin in (0.5, 1.0, 1.5, 2.0):
            for weight in ("unit", "z"):
                run_t(invariant(kind, zmin, weight), Xtr, Xte, f"  {kind} |z|>={zmin} {weight}")
