"""Third pass diagnostics (2026-12-03): how much within-task difficulty signal the default
featurizer carries at all, and how noisy one rotation's APGR is. Uses test folds only to *measure*
(nothing here is selected or tuned).

1. transfer: corr(predicted ease, true ease) on each held-out task's test rows for the default
   difficulty model trained on the other two tasks.
2. in-task ceiling: the same ridge trained on the task's *own* train rows (an upper bound for any
   transfer from other tasks with these features), hard -> gpt-4.
3. noise: bootstrap standard error (200 resamples of the fold's prompts) of the default's APGR,
   and the spread (std over 200 seeds) of a random router's APGR on the same fold.
"""
import sys; sys.path.insert(0, "scripts/generalization")
from common import *
from sklearn.linear_model import Ridge
from router.family_base import impute_missing
X = np.load(E + "X_minilm-l6-v2-static+stats_tr.npy"); Xt = np.load(E + "X_minilm-l6-v2-static+stats_te.npy")
d = FAMILIES["difficulty"]
for t in TASKS:
    a, b = ttr == t, tte == t
    eb = impute_missing(Yte[b]).mean(1); ea = impute_missing(Ytr[a]).mean(1)
    st = d.fit(X[~a], Ytr[~a], dict(d.defaults), False)
    h = Xt[b] @ st["coef"] + st["bias"][0]
    P = d.predict(st, Xt[b]); sc = P[:, S] - P[:, W]
    line = f"{t:14s} transfer corr(h, ease) {np.corrcoef(h, eb)[0, 1]:+.3f}"
    for cols, nm in ((slice(None), "emb+stats"), (slice(0, 384), "emb"), (slice(384, None), "stats")):
        hi = Ridge(alpha=100).fit(X[a][:, cols], ea).predict(Xt[b][:, cols])
        line += f" | in-task {nm}: corr {np.corrcoef(hi, eb)[0, 1]:+.3f} APGR {apgr(-hi, Yte[b]):.3f}"
    rng = np.random.default_rng(0); Yb = Yte[b]
    boots = [apgr(sc[i], Yb[i]) for i in (rng.integers(0, len(sc), len(sc)) for _ in range(200))]
    null = [apgr(rng.random(len(sc)), Yb) for _ in range(200)]
    print(line + f" | default APGR {apgr(sc, Yb):.3f} bootstrap SE {np.std(boots):.3f}"
          f" | random APGR {np.mean(null):.3f} +- {np.std(null):.3f}", flush=True)
