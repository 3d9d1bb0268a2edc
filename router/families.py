"""Learned router families: each maps prompt embeddings to per-model predicted quality in [0, 1].

All are scikit-learn (or plain numpy arrays) so a fitted state is a dict of standard objects that
skops can save and load without pickle. A family is `fit(X, Y, params) -> state` and
`predict(state, X) -> [n, m]`. `Y` is the [n, m] score matrix; NaN marks a model not scored
on a prompt (masked where the family allows, otherwise imputed with the model's mean).
This module holds the registry (`FAMILIES`, `get_family`) and the two composites (ensemble,
gated); the sklearn families are in `families_sklearn`, mf and the difficulty families in
`families_irt`, what they share in `family_base`.

- knn:    KNeighborsRegressor, mean score of the k nearest training prompts (RouterBench's KNN).
- mlp:    MLPRegressor, one shared network with one output per model (RouterBench's MLP).
- svm:    one RBF SVR per model.
- logreg: one logistic regression per model; fractional scores become weighted 1/0 samples.
- mf:     matrix factorisation as in RouteLLM: quality(m, q) = sigmoid(b_m + v_m . (W q)),
          a low-rank bilinear model fitted with Adam on the masked binary cross-entropy.
- difficulty: one ridge regression predicts how hard a prompt is (its mean score over every
          model), each model's quality is a line in that difficulty (fitted per model). Sharing
          one difficulty axis across models carries to unseen tasks far better than per-model
          topic boundaries (leave-one-task-out numbers in docs/benchmarks.md); IRT's view.
- ensemble: the mean of several families' per-model predictions (default difficulty + mlp + knn):
          the best in distribution, worse than difficulty alone on unseen tasks (docs/benchmarks.md).
- gated:  a novelty gate between the two: a prompt as close to its nearest training prompts
          (cosine on standardised features) as 95% of the training prompts are to theirs gets the
          ensemble's prediction, any other gets difficulty's. Unseen tasks fall to difficulty,
          prompts like the training data (a team's own traffic, once trained on its traces) get
          the in-distribution strength. Plain arrays (npz; the members re-implemented in numpy),
          so a routing process still imports no sklearn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router.families_irt import fit_difficulty, fit_mf, fit_task_difficulty, predict_difficulty, predict_mf
from router.families_sklearn import (fit_knn, fit_logreg, fit_mlp, fit_svm, predict_knn, predict_logreg, predict_mlp,
                                     predict_svm)
from router.family_base import Family, FamilyError, impute_missing, to_unit

__all__ = ["FAMILIES", "Family", "FamilyError", "familiar", "get_family", "predict_gated", "resolve_params"]


# ---- ensemble ----
def _fit_ensemble(X, Y, p, progress):
    members = [str(m) for m in p["members"]]
    if not members or "ensemble" in members or any(m not in FAMILIES for m in members):
        raise FamilyError(f"ensemble members must be other families, got {members}; choose from "
                          f"{sorted(set(FAMILIES) - {'ensemble'})}")
    # each member with its own defaults: the ensemble adds no hyperparameters to tune per task
    states = {m: FAMILIES[m].fit(X, Y, dict(FAMILIES[m].defaults), progress) for m in members}
    return {"members": states}


def _predict_ensemble(state, X):
    preds = [FAMILIES[m].predict(st, X) for m, st in state["members"].items()]
    return to_unit(np.mean(preds, axis=0))


# ---- gated ----
def _unit_rows(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _familiarity(bank: np.ndarray, Q: np.ndarray, k: int, exclude_self: bool = False, block: int = 1024) -> np.ndarray:
    """Mean cosine similarity of each row of Q to its k most similar bank rows (both already
    standardised and unit length), in blocks so a large trace set never builds an n x n matrix."""
    out = np.empty(len(Q))
    for i in range(0, len(Q), block):
        G = Q[i:i + block] @ bank.T
        if exclude_self:  # Q is the bank: a prompt is not its own neighbour
            G[np.arange(len(G)), np.arange(i, i + len(G))] = -np.inf
        out[i:i + block] = np.sort(np.partition(G, G.shape[1] - k, axis=1)[:, -k:], axis=1).mean(axis=1)
    return out


def _fit_gated(X, Y, p, progress):
    if len(X) < 3:
        raise FamilyError("the gated family needs at least 3 training prompts")
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(X), int(p["max_bank"]), replace=False)) if len(X) > p["max_bank"] else np.arange(len(X))
    state: dict[str, Any] = {f"difficulty_{k}": v for k, v in
                             fit_difficulty(X, Y, dict(FAMILIES["difficulty"].defaults), progress).items()}
    mlp = fit_mlp(X, Y, dict(FAMILIES["mlp"].defaults), progress)["model"]
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        state[f"mlp_w{i}"], state[f"mlp_b{i}"] = np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)  # the members above fit on X as given, as the ensemble's do
    state["knn_x"], state["knn_y"] = X[keep], impute_missing(Y)[keep]
    state["knn_sq"] = (X[keep] ** 2).sum(axis=1)
    state["knn_k"] = np.array([min(int(FAMILIES["knn"].defaults["n_neighbors"]), len(keep))])
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-6
    bank = _unit_rows((X[keep] - mu) / sd)
    k = min(int(p["gate_neighbors"]), len(keep) - 1)
    tau = float(np.quantile(_familiarity(bank, bank, k, exclude_self=True), p["outlier_share"]))
    if tau <= 0.0:  # its own prompts are no nearer each other than unrelated directions are (a
        tau = np.inf  # handful of templated prompts: about -1/(n-1) each): it cannot tell, so all novel
    state.update(gate_mu=mu, gate_sd=sd, gate_bank=bank.astype(np.float32), gate_k=np.array([k]), gate_tau=np.array([tau]))
    return state


def familiar(state: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """Which prompts look like the gated router's training data: as similar to their nearest
    training prompts as all but `outlier_share` of the training prompts are to theirs."""
    Q = _unit_rows((np.asarray(X, dtype=np.float64) - state["gate_mu"]) / state["gate_sd"]).astype(np.float32)
    return _familiarity(state["gate_bank"], Q, int(state["gate_k"][0])) >= float(state["gate_tau"][0])


def predict_gated(state: dict[str, Any], X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A gated artifact's predictions and which prompts took the ensemble's path (the gate is
    computed once for both: the routing span reports it as `router.familiar`)."""
    X = np.asarray(X, dtype=np.float64)
    P = predict_difficulty({k[len("difficulty_"):]: v for k, v in state.items() if k.startswith("difficulty_")}, X)
    near = familiar(state, X)
    if not near.any():  # novel traffic costs difficulty + the gate only
        return P, near
    H, i = X[near], 0
    while f"mlp_w{i + 1}" in state:  # sklearn's MLPRegressor: relu hidden layers, identity output
        H = np.maximum(H @ state[f"mlp_w{i}"] + state[f"mlp_b{i}"], 0.0)
        i += 1
    P_mlp = to_unit(H @ state[f"mlp_w{i}"] + state[f"mlp_b{i}"])
    # KNeighborsRegressor(brute, uniform): mean score of the k nearest (squared distance up to a per-row constant)
    d2 = state["knn_sq"][None, :] - 2 * X[near] @ state["knn_x"].T
    k = int(state["knn_k"][0])
    P_knn = to_unit(state["knn_y"][np.argpartition(d2, k - 1, axis=1)[:, :k]].mean(axis=1))
    P[near] = to_unit((P[near] + P_mlp + P_knn) / 3.0)  # the ensemble family with its default members
    return P, near


def _predict_gated(state, X):
    return predict_gated(state, X)[0]


FAMILIES: dict[str, Family] = {
    "knn": Family("knn", {"n_neighbors": 40, "weights": "uniform"}, fit_knn, predict_knn,
                  "k nearest neighbours' mean score"),
    "mlp": Family("mlp", {"hidden_layer_sizes": [128], "alpha": 1e-3, "learning_rate_init": 1e-3,
                          "max_iter": 300, "random_state": 0}, fit_mlp, predict_mlp,
                  "one MLP regressor with an output per model"),
    "svm": Family("svm", {"kernel": "rbf", "C": 1.0, "epsilon": 0.1, "gamma": "scale"},
                  fit_svm, predict_svm,
                  "one RBF support-vector regressor per model"),
    "logreg": Family("logreg", {"C": 1.0, "max_iter": 1000}, fit_logreg,
                     predict_logreg, "one logistic regression per model"),
    "mf": Family("mf", {"rank": 32, "epochs": 300, "learning_rate": 0.01, "l2": 1e-4, "random_state": 0},
                 fit_mf, predict_mf, "RouteLLM-style bilinear matrix factorisation"),
    "difficulty": Family("difficulty", {"alpha": 100.0, "shrink": 20.0, "link": "logistic"}, fit_difficulty, predict_difficulty,
                         "shared prompt-difficulty regression, per-model quality linear in it"),
    "task_difficulty": Family("task_difficulty", {"alpha": 10.0, "shrink": 20.0}, fit_task_difficulty,
                              predict_difficulty, "difficulty standardised per task, for many tasks and label kinds",
                              grouped=True),
    "ensemble": Family("ensemble", {"members": ["difficulty", "mlp", "knn"]}, _fit_ensemble, _predict_ensemble,
                       "mean of several families' per-model predictions"),
    "gated": Family("gated", {"gate_neighbors": 10, "outlier_share": 0.05, "max_bank": 5000}, _fit_gated, _predict_gated,
                    "ensemble on prompts like the training data, difficulty on the rest"),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise FamilyError(f"unknown router family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def resolve_params(family: Family, overrides: dict[str, Any] | None) -> dict[str, Any]:
    overrides = overrides or {}
    unknown = set(overrides) - set(family.defaults)
    if unknown:
        raise FamilyError(f"family {family.name!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(family.defaults)}")
    return {**family.defaults, **overrides}
