"""Third pass (2026-12-03): within-task fitting and cross-model pair targets for the difficulty model.

APGR on one task depends only on the ranking *within* that task, so fit on task-demeaned data:
X' = X - (1 - lam) * mean_task(X), y' = y - (1 - lam) * mean_task(y) (lam=0: pure within-task,
lam=1: the pooled default; quasi-demeaning), predict with raw features (a per-task offset does not
change a task's ranking). Targets: `ease` (mean score over models, the default), `pairs` (mean over
model pairs whose average quality differs by >= delta of "the stronger one is right and the
weaker wrong", RouteLLM's P(strong wins) averaged over many pairs: augmentation by pairs, which
under a linear ridge collapses to this one per-prompt target), `rank` (within-task percentile of
ease). Direction: `slopes` (the difficulty family's per-model lines, pooled or within-task),
or `fixed` (hard -> strong for ease/rank, high -> strong for pairs: no fitted sign).
"""
import sys; sys.path.insert(0, "scripts/generalization")
from common import *
from sklearn.linear_model import Ridge
from router.family_base import impute_missing
X = np.load(E + "X_minilm-l6-v2-static+stats_tr.npy"); Xt = np.load(E + "X_minilm-l6-v2-static+stats_te.npy")


def demean(A, ta, lam):
    A = np.array(A, dtype=float)
    for t in set(ta):
        A[ta == t] -= (1 - lam) * A[ta == t].mean(0)
    return A


def target(Ya, ta, kind, delta=0.05):
    Yi = impute_missing(Ya)
    if kind == "ease":
        return Yi.mean(1)
    if kind == "rank":
        y = np.empty(len(Yi)); e = Yi.mean(1)
        for t in set(ta):
            k = ta == t; y[k] = (np.argsort(np.argsort(e[k])) + 0.5) / k.sum()
        return y
    if kind in ("pairs", "pairs-diff"):
        q = Yi.mean(0); y = np.zeros(len(Yi)); n = 0
        for a in range(Yi.shape[1]):
            for b in range(Yi.shape[1]):
                if q[a] - q[b] >= delta:
                    y += Yi[:, a] * (1 - Yi[:, b]) if kind == "pairs" else Yi[:, a] - Yi[:, b]; n += 1
        return y / max(n, 1)
    if kind == "pairs-task":  # pairs ordered by each task's own model ranking (stronger *on this task*)
        y = np.zeros(len(Yi))
        for t in set(ta):
            k = ta == t; q = Yi[k].mean(0); n = 0
            for a in range(Yi.shape[1]):
                for b in range(Yi.shape[1]):
                    if q[a] - q[b] >= delta:
                        y[k] += Yi[k, a] * (1 - Yi[k, b]); n += 1
            y[k] /= max(n, 1)
        return y
    if kind == "pairs-w":  # pairs weighted by their quality difference
        q = Yi.mean(0); y = np.zeros(len(Yi)); n = 0
        for a in range(Yi.shape[1]):
            for b in range(Yi.shape[1]):
                if q[a] - q[b] >= delta:
                    y += (q[a] - q[b]) * Yi[:, a] * (1 - Yi[:, b]); n += q[a] - q[b]
        return y / max(n, 1e-9)
    raise ValueError(kind)


def scorer(kind="ease", lam=1.0, alpha=100.0, direction="slopes", slope_lam=None, delta=0.05, lam_x=None,
           balanced=False):
    """lam demeans the target (and the features unless lam_x says otherwise: lam_x=1 with lam=0
    is 'demean only the target'). balanced: every training task weighs the same in the ridge."""
    def sc(Xa, Ya, ta, Xb):
        y = target(Ya, ta, kind, delta)
        w = None
        if balanced:
            w = np.array([len(ta) / (len(set(ta)) * (ta == t).sum()) for t in ta])
        r = Ridge(alpha=alpha).fit(demean(Xa, ta, lam if lam_x is None else lam_x), demean(y, ta, lam), sample_weight=w)
        hb = r.predict(Xb)
        if direction == "fixed":
            return -hb if kind in ("ease", "rank") else hb
        # per-model lines in h (the difficulty family), fitted on h and Y demeaned with slope_lam
        sl = lam if slope_lam is None else slope_lam
        ha = demean(r.predict(Xa), ta, sl)
        g = Ya[:, S] - Ya[:, W]; k = ~np.isnan(g)
        slope_gap = np.cov(ha[k], demean(g, ta, sl)[k])[0, 1]
        return np.sign(slope_gap) * hb
    return sc


def grid1():
    run_t(scorer(), X, Xt, "default (ease, pooled, slopes)")
    for kind in ("ease", "rank", "pairs", "pairs-diff"):
        for lam in (0.0, 0.25, 0.5, 1.0):
            for direction in ("slopes", "fixed"):
                if kind == "rank" and lam == 1.0:
                    continue
                run_t(scorer(kind, lam, 100.0, direction), X, Xt, f"{kind} lam={lam} {direction}")


def grid2():
    # demean only the target (raw features), for each target
    for kind in ("ease", "pairs"):
        for lam in (0.0, 0.5):
            run_t(scorer(kind, lam, 100.0, "slopes", lam_x=1.0), X, Xt, f"{kind} target-only lam={lam} slopes")
    # slopes fitted within task on the pooled (default) difficulty
    run_t(scorer("ease", 1.0, 100.0, "slopes", slope_lam=0.0), X, Xt, "ease pooled, within-task slopes")
    # the pairs target: alpha, delta, weighting
    for kind in ("pairs", "pairs-w"):
        for delta in ((0.0, 0.05, 0.1, 0.2) if kind == "pairs" else (0.0, 0.1)):
            for lam in (0.5, 1.0):
                for alpha in (30.0, 100.0, 300.0):
                    if kind == "pairs" and delta == 0.05 and alpha == 100.0:
                        continue  # in grid1
                    run_t(scorer(kind, lam, alpha, "fixed", delta=delta), X, Xt, f"{kind} d={delta} lam={lam} a={alpha:g}")



def zsum(*scorers):
    """sum of z-scored router scores (each scorer's scale differs)"""
    def sc(Xa, Ya, ta, Xb):
        out = [s(Xa, Ya, ta, Xb) for s in scorers]
        return sum((o - o.mean()) / (o.std() + 1e-12) for o in out)
    return sc


def grid3():
    for delta in (0.0, 0.05, 0.1):
        for lam in (0.5, 1.0):
            for alpha in (100.0, 300.0):
                run_t(scorer("pairs-task", lam, alpha, "fixed", delta=delta), X, Xt, f"pairs-task d={delta} lam={lam} a={alpha:g}")
    for lam in (0.5, 1.0):
        for alpha in (100.0, 300.0):
            run_t(zsum(scorer(), scorer("pairs", lam, alpha, "fixed")), X, Xt, f"z(default)+z(pairs lam={lam} a={alpha:g})")



def shrink_to_common(s_common):
    """the difficulty family with each model's slope pulled toward the mean slope"""
    d = FAMILIES["difficulty"]
    def sc(Xa, Ya, ta, Xb):
        st = d.fit(Xa, Ya, dict(d.defaults), False)
        m = st["slope"].mean(); st["slope"] = (1 - s_common) * st["slope"] + s_common * m
        P = d.predict(st, Xb); return P[:, S] - P[:, W]
    return sc


def grid4():
    # the two-model score is (slope_S - slope_W) * h + const: pulling slopes toward a common one
    # scales that difference by (1 - s) > 0 and cannot change the ranking (only clipping at 0/1 can)
    for s_common in (0.0, 0.5, 0.9):
        run_t(shrink_to_common(s_common), X, Xt, f"difficulty, slopes shrunk {s_common} to common")



def grid5():
    # the full transformer at 128 tokens (+ the 8 statistics of the default featurizer): within-task
    # fitting was meant to strip exactly the topic directions that sank it in the second pass
    T = np.load(E + "X_minilm-l6-v2@t128_tr.npy"); Tt = np.load(E + "X_minilm-l6-v2@t128_te.npy")
    for nm, A, B in (("t128+stats", np.hstack([T, X[:, 384:]]), np.hstack([Tt, Xt[:, 384:]])), ("t128", T, Tt)):
        for kind in ("ease", "pairs"):
            for lam in (0.0, 0.5, 1.0):
                for alpha in (30.0, 100.0, 300.0):
                    run_t(scorer(kind, lam, alpha, "slopes" if kind == "ease" else "fixed"), A, B, f"{nm} {kind} lam={lam} a={alpha:g}")



def grid6():
    # task-balanced ridge weights (ARC has 3x MBPP's rows): the unseen task is one more draw of a task
    for kind in ("ease", "pairs"):
        for lam in (0.5, 1.0):
            for alpha in (100.0, 300.0):
                run_t(scorer(kind, lam, alpha, "slopes" if kind == "ease" else "fixed", balanced=True), X, Xt,
                      f"balanced {kind} lam={lam} a={alpha:g}")


if __name__ == "__main__":
    {"1": grid1, "2": grid2, "3": grid3, "4": grid4, "5": grid5, "6": grid6}[sys.argv[1] if len(sys.argv) > 1 else "1"]()
