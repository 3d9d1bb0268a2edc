"""Eleventh pass (docs/benchmarks.md): per-model isotonic calibration of the predicted quality,
fitted on out-of-fold predictions inside the training rows (5 folds), so that a predicted 0.7
means "right 70% of the time" in every artifact and `cost_weight` means the same across them.
Per-model maps are monotone per model but not in the gpt-4 - mixtral gap, so APGR can move.
Also reported: expected calibration error (10 bins) of the two routed models' predictions.

    PYTHONPATH=$PWD:$PWD/scripts/generalization python scripts/generalization/isotonic.py   # ~1 min
"""
import numpy as np
from sklearn.isotonic import IsotonicRegression

from common import E, S, TASKS, W, Yte, Ytr, apgr, tte, ttr
from router.families import FAMILIES

Xtr, Xte = np.load(E + "X_minilm-l6-v2-static+stats_tr.npy"), np.load(E + "X_minilm-l6-v2-static+stats_te.npy")


def fit_predict(family, Xa, Ya, Xb):
    f = FAMILIES[family]
    return f.predict(f.fit(Xa, Ya, dict(f.defaults), False), Xb)


def calibrated(family, Xa, Ya, ta, Xb):
    """Predictions for Xb with each model's isotonic map fitted on 5-fold out-of-fold predictions in (Xa, Ya)."""
    fold = np.random.default_rng(0).permutation(len(Xa)) % 5
    oof = np.empty_like(Ya)
    for k in range(5):
        oof[fold == k] = fit_predict(family, Xa[fold != k], Ya[fold != k], Xa[fold == k])
    P = fit_predict(family, Xa, Ya, Xb)
    out = P.copy()
    for j in range(Ya.shape[1]):
        ok = ~np.isnan(Ya[:, j])
        iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(oof[ok, j], Ya[ok, j])
        out[:, j] = iso.predict(P[:, j])
    return P, out


def ece(p, y, bins=10):
    ok = ~np.isnan(y)
    p, y = p[ok], y[ok]
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return sum(abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean() for b in range(bins) if (idx == b).any())


def gap(P):
    return P[:, S] - P[:, W]


for family in ("difficulty", "gated", "knn", "mlp"):
    rows = []
    for t in TASKS:
        P, C = calibrated(family, Xtr[ttr != t], Ytr[ttr != t], ttr[ttr != t], Xte[tte == t])
        rows.append((apgr(gap(P), Yte[tte == t]), apgr(gap(C), Yte[tte == t])))
    P, C = calibrated(family, Xtr, Ytr, ttr, Xte)
    e = [(ece(P[:, j], Yte[:, j]), ece(C[:, j], Yte[:, j])) for j in (S, W)]
    print(f"{family:10s} LOTO raw {' '.join(f'{a:.3f}' for a, _ in rows)} | calibrated {' '.join(f'{b:.3f}' for _, b in rows)}"
          f" || in-dist raw {apgr(gap(P), Yte):.3f} calibrated {apgr(gap(C), Yte):.3f}"
          f" || ECE gpt-4 {e[0][0]:.3f}->{e[0][1]:.3f} mixtral {e[1][0]:.3f}->{e[1][1]:.3f}"
          f" || predicted gap range raw {np.ptp(gap(P)):.3f} calibrated {np.ptp(gap(C)):.3f}", flush=True)
