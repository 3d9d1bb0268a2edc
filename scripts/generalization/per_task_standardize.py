"""Seventh pass (2026-12-04): standardise features per task (transductive domain adaptation).

Each training task's features are z-scored with that task's own mean and std, and a held-out
task's with *its own* prompts' mean and std (unlabelled: in serving, the user's calibration
sample). Unlike demeaning (third pass), per-task scaling changes the ranking inside a task: a
feature that varies little in the new task weighs as much as one that varies a lot. Targets as in
the third pass; direction fixed (hard -> strong for ease, high -> strong for pairs) or the
difficulty family's fitted per-model slopes.
"""
import sys; sys.path.insert(0, "scripts/generalization")
from common import *
from within_task import target
from sklearn.linear_model import Ridge
from sklearn.decomposition import PCA
X = np.load(E + "X_minilm-l6-v2-static+stats_tr.npy"); Xt = np.load(E + "X_minilm-l6-v2-static+stats_te.npy")


def zs(A, ta=None, scale=True):
    A = np.array(A, dtype=float)
    groups = [np.ones(len(A), bool)] if ta is None else [ta == t for t in set(ta)]
    for k in groups:
        A[k] -= A[k].mean(0)
        if scale:
            A[k] /= A[k].std(0) + 1e-6
    return A


def scorer(kind="ease", alpha=100.0, scale=True, fixed=True, pca=None):
    def sc(Xa, Ya, ta, Xb):
        Za, Zb = zs(Xa, ta, scale), zs(Xb, None, scale)
        if pca:
            p = PCA(pca, whiten=True).fit(Za); Za, Zb = p.transform(Za), p.transform(Zb)
        y = target(Ya, ta, kind)
        y = np.array(y, float)
        for t in set(ta):
            y[ta == t] -= y[ta == t].mean()
        r = Ridge(alpha=alpha).fit(Za, y)
        hb = r.predict(Zb)
        if fixed:
            return -hb if kind == "ease" else hb
        ha = r.predict(Za); g = Ya[:, S] - Ya[:, W]; k = ~np.isnan(g)
        return np.sign(np.cov(ha[k], g[k])[0, 1]) * hb
    return sc


def run_tt(sc, name):
    """run_t, but the in-distribution test set is standardised per task too (its own stats)."""
    inner = [apgr(sc(X[ttr != t], Ytr[ttr != t], ttr[ttr != t], X[ttr == t]), Ytr[ttr == t]) for t in TASKS]
    outer = [apgr(sc(X[ttr != t], Ytr[ttr != t], ttr[ttr != t], Xt[tte == t]), Yte[tte == t]) for t in TASKS]
    ind = apgr(sc(X, Ytr, ttr, Xt), Yte)  # the mixed test split standardised as one sample
    print(f"{name:40s} inner {' '.join(f'{a:.3f}' for a in inner)} min {min(inner):.3f} | test {' '.join(f'{a:.3f}' for a in outer)} min {min(outer):.3f} | ind {ind:.3f}", flush=True)


if __name__ == "__main__":
    for kind in ("ease", "pairs"):
        for alpha in (30.0, 100.0, 300.0, 1000.0, 3000.0):
            for scale in (True, False):
                for fixed in (True, False):
                    run_tt(scorer(kind, alpha, scale, fixed), f"{kind} a={alpha:g} scale={scale} fixed={fixed}")
    for kind in ("ease", "pairs"):
        for pca in (8, 32):
            for alpha in (10.0, 100.0, 1000.0):
                run_tt(scorer(kind, alpha, True, True, pca), f"{kind} pca={pca} a={alpha:g}")
