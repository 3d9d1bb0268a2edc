"""Eighth pass (2026-12-04): learn a new task's routing from a cascade's outcomes, no human labels.

A cascade run on a new kind of traffic labels it for free: where weak and verifier disagree, the
weak answer is often wrong (RouterBench test split: mixtral right on 90% of agreed prompts, 42% of
escalated ones). So take a task the router never saw, pretend its *train* split is traffic that
went through the cascade (only the two cheap answers are read, no correctness), fit a prompt
model to "the cascade escalated", and score it as a router on that task's *test* split with the
true labels. The verifier is chosen as in the sixth pass (without the held-out task). Compared
with the default leave-one-task-out router (trained on the other two tasks' real labels) and with
both combined (z-scored sum).
"""
import sys; sys.path.insert(0, "scripts/generalization")
import numpy as np
from common import *
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor
from deployments.cascade import agree
from training.dataset import load_jsonl

X = np.load(E + "X_minilm-l6-v2-static+stats_tr.npy"); Xt = np.load(E + "X_minilm-l6-v2-static+stats_te.npy")
tr, te = load_jsonl(".doka/data/routerbench/train.jsonl"), load_jsonl(".doka/data/routerbench/test.jsonl")
assert len(tr) == len(X) and len(te) == len(Xt) and np.array_equal(np.nan_to_num(tr.scores, nan=-1), np.nan_to_num(Ytr, nan=-1))
VERIFIER = {"arc-challenge": "Yi-34B-Chat", "mbpp": "Yi-34B-Chat", "winogrande": "claude-instant-v1"}
WEAK = "mixtral-8x7b-chat"
chat = lambda t: {"choices": [{"message": {"content": t}}]}


def escalated(ds, rows, verifier):
    return np.array([0.0 if agree(chat(ds.extra[i]["responses"].get(WEAK, "")), chat(ds.extra[i]["responses"].get(verifier, "")))
                     else 1.0 for i in rows])


def z(v):
    return (v - v.mean()) / (v.std() + 1e-9)


def main():
    for t in TASKS:
        a, b = np.flatnonzero(ttr == t), np.flatnonzero(tte == t)
        y = escalated(tr, a, VERIFIER[t])
        default = fitpred("difficulty", X[ttr != t], Ytr[ttr != t], Xt[b])  # the LOTO default
        out = {"default (LOTO)": default}
        if 0 < y.mean() < 1:
            for alpha in (10.0, 100.0, 1000.0):
                out[f"ridge to escalated, alpha {alpha:g}"] = Ridge(alpha=alpha).fit(X[a], y).predict(Xt[b])
            for C in (0.1, 1.0):
                out[f"logreg to escalated, C {C:g}"] = LogisticRegression(C=C, max_iter=2000).fit(X[a], y).predict_proba(Xt[b])[:, 1]
            for k in (10, 40):
                out[f"knn to escalated, k {k}"] = KNeighborsRegressor(k).fit(X[a], y).predict(Xt[b])
            r = Ridge(alpha=100.0).fit(X[a], y).predict(Xt[b])
            out["z-sum: default + ridge alpha 100"] = z(default) + z(r)
        print(f"{t}: verifier {VERIFIER[t]}, train rows {len(a)}, escalated share {y.mean():.3f}")
        for name, s in out.items():
            k = ~np.isnan(Yte[b, S]) & ~np.isnan(Yte[b, W])
            rep = two_model_report(s[k], Yte[b][k, S], Yte[b][k, W], bootstrap=200)["router"]
            print(f"   {name:40s} APGR {rep['apgr']:.3f} ± {rep['apgr_se']:.3f}  CPT(50%) {rep['cpt50']:.1f}%", flush=True)


if __name__ == "__main__":
    main()
