"""Fifth pass (docs/benchmarks.md): novelty gates between the ensemble (familiar prompts) and
difficulty (the rest). Prints, per gate, the familiar share of each held-out task's test prompts
and of the in-distribution test split, then common.run_t's scores.

    PYTHONPATH=$PWD python scripts/generalization/cache_features.py minilm-l6-v2-static+stats
    PYTHONPATH=$PWD python scripts/generalization/cache_extra_features.py   # final-question embedding
    PYTHONPATH=$PWD:$PWD/scripts/generalization python scripts/generalization/gates.py
"""
import numpy as np
from sklearn.cluster import KMeans

from common import E, S, TASKS, W, Ytr, run_t, tte, ttr
from router.families import FAMILIES
from router.family_base import impute_missing

FID = "minilm-l6-v2-static+stats"
Xtr, Xte = np.load(E + f"X_{FID}_tr.npy"), np.load(E + f"X_{FID}_te.npy")
d = Xtr.shape[1]
Ltr, Lte = np.load(E + "X_last_tr.npy"), np.load(E + "X_last_te.npy")  # final question only


def unit(X):
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def predict(name, Xa, Ya, Xb):
    f = FAMILIES[name]
    return f.predict(f.fit(Xa, Ya, dict(f.defaults), False), Xb)


def topk(A, B, k, loo=False):
    G = B @ A.T
    if loo:
        np.fill_diagonal(G, -np.inf)
    return np.sort(np.partition(G, G.shape[1] - k, axis=1)[:, -k:], axis=1).mean(1)


def knn_gate(k=10, q=0.05, standardise=True, view="whole"):
    def gate(A, B):
        if view == "last":
            A, B = A[:, d:], B[:, d:]
        elif view == "embedding":  # without the 8 prompt statistics
            A, B = A[:, :d - 8], B[:, :d - 8]
        else:
            A, B = A[:, :d], B[:, :d]
        if standardise:
            mu, sd = A.mean(0), A.std(0) + 1e-6
            A, B = (A - mu) / sd, (B - mu) / sd
        A, B = unit(A), unit(B)
        return topk(A, B, k) >= np.quantile(topk(A, A, k, loo=True), q)
    return gate


def centroid_gate(n, q=0.05):
    def gate(A, B):
        A, B = A[:, :d], B[:, :d]
        mu, sd = A.mean(0), A.std(0) + 1e-6
        Za, Zb = unit((A - mu) / sd), unit((B - mu) / sd)
        C = unit(KMeans(n, n_init=3, random_state=0).fit(Za).cluster_centers_)
        return (Zb @ C.T).max(1) >= np.quantile((Za @ C.T).max(1), q)
    return gate


def diagonal_gate(q=0.05):
    def gate(A, B):
        A, B = A[:, :d], B[:, :d]
        mu, sd = A.mean(0), A.std(0) + 1e-6
        return (((B - mu) / sd) ** 2).sum(1) <= np.quantile((((A - mu) / sd) ** 2).sum(1), 1 - q)
    return gate


def gated(gate, cosine_knn=False):
    def scorer(Xa, Ya, ta, Xb):
        A, B = Xa[:, :d], Xb[:, :d]
        P_out = predict("difficulty", A, Ya, B)
        if cosine_knn:  # kNN on the gate's standardised cosine: one matrix product for both
            mu, sd = A.mean(0), A.std(0) + 1e-6
            G = unit((B - mu) / sd) @ unit((A - mu) / sd).T
            P_knn = impute_missing(Ya)[np.argpartition(-G, 39, axis=1)[:, :40]].mean(1)
            P_in = np.clip((P_out + predict("mlp", A, Ya, B) + P_knn) / 3, 0, 1)
        else:
            P_in = predict("ensemble", A, Ya, B)
        near = gate(Xa, Xb)
        scorer.share = float(near.mean())
        P = np.where(near[:, None], P_in, P_out)
        return P[:, S] - P[:, W]
    return scorer


XtrG, XteG = np.hstack([Xtr, Ltr]), np.hstack([Xte, Lte])
CANDIDATES = {
    "kNN gate, standardised cosine, k=10, 5% (the gated family)": gated(knn_gate()),
    "  k=5": gated(knn_gate(k=5)), "  k=20": gated(knn_gate(k=20)), "  outlier share 1%": gated(knn_gate(q=0.01)),
    "kNN gate, raw cosine": gated(knn_gate(standardise=False)),
    "kNN gate, raw cosine, embedding without the statistics": gated(knn_gate(standardise=False, view="embedding")),
    "kNN gate, final question only": gated(knn_gate(view="last")),
    "16 k-means centroids": gated(centroid_gate(16)), "64 k-means centroids": gated(centroid_gate(64)),
    "diagonal Gaussian distance": gated(diagonal_gate()),
    "the family's gate, kNN member on the gate's cosine": gated(knn_gate(), cosine_knn=True),
}
for name, scorer in CANDIDATES.items():
    shares = []
    for t in TASKS:
        scorer(XtrG[ttr != t], Ytr[ttr != t], ttr[ttr != t], XteG[tte == t])
        shares.append(scorer.share)
    scorer(XtrG, Ytr, ttr, XteG)
    print(f"{name}: familiar share held-out " + " / ".join(f"{s:.3f}" for s in shares) + f", in distribution {scorer.share:.3f}")
    run_t(scorer, XtrG, XteG, "  ")
