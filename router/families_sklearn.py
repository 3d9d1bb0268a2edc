"""The scikit-learn families: knn, mlp, svm (one RBF SVR per model) and logreg (one logistic
regression per model). Their states hold sklearn objects (saved with skops)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from router.family_base import impute_missing, sigmoid, to_unit


# ---- knn ----
def fit_knn(X, Y, p, progress):
    from sklearn.neighbors import KNeighborsRegressor

    k = int(min(p["n_neighbors"], len(X)))
    model = KNeighborsRegressor(n_neighbors=k, weights=p["weights"], algorithm="brute")
    model.fit(X, impute_missing(Y))
    return {"model": model}


def predict_knn(state, X):
    P = state["model"].predict(X)
    return to_unit(P.reshape(len(X), -1))


# ---- mlp ----
def fit_mlp(X, Y, p, progress):
    from sklearn.neural_network import MLPRegressor

    model = MLPRegressor(
        hidden_layer_sizes=tuple(p["hidden_layer_sizes"]),
        alpha=p["alpha"],
        learning_rate_init=p["learning_rate_init"],
        max_iter=p["max_iter"],
        early_stopping=len(X) >= 50,
        random_state=p["random_state"],
    )
    model.fit(X, impute_missing(Y))
    return {"model": model}


def predict_mlp(state, X):
    return to_unit(state["model"].predict(X).reshape(len(X), -1))


# ---- per-model estimators (svm, logreg) ----
def _fit_per_label(make, soft_labels: bool):
    def fit(X, Y, p, progress):
        models: list[Any] = []
        constants = np.zeros(Y.shape[1])
        for j in tqdm(range(Y.shape[1]), desc="fitting per model", disable=not progress):
            keep = ~np.isnan(Y[:, j])
            y = Y[keep, j]
            constants[j] = float(y.mean()) if len(y) else 0.5
            if len(y) < 5 or np.ptp(y) == 0:
                models.append(None)  # nothing to learn: predict the constant
                continue
            est = make(p)
            if soft_labels:
                Xk = X[keep]
                X2 = np.vstack([Xk, Xk])
                y2 = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
                w = np.concatenate([y, 1.0 - y])
                nz = w > 0
                est.fit(X2[nz], y2[nz], sample_weight=w[nz])
            else:
                est.fit(X[keep], y)
            models.append(est)
        return {"models": models, "constants": constants}

    return fit


def _positive_linear(est: Any) -> tuple[np.ndarray, float] | None:
    """(coef, intercept) of a binary LogisticRegression whose positive class is 1.0, else None."""
    coef = getattr(est, "coef_", None)
    classes = list(getattr(est, "classes_", []))
    if coef is None or coef.shape[0] != 1 or classes != [0.0, 1.0]:
        return None
    return coef[0], float(est.intercept_[0])


def _predict_per_label(proba: bool):
    def predict(state, X):
        out = np.zeros((len(X), len(state["models"])))
        for j, est in enumerate(state["models"]):
            if est is None:
                out[:, j] = state["constants"][j]
            elif proba and (lin := _positive_linear(est)) is not None:
                # sigmoid(X w + b) is exactly predict_proba's class-1 column, without sklearn's
                # per-call input validation (~0.4 ms per label, 11 labels, on every request)
                out[:, j] = sigmoid(np.asarray(X, dtype=np.float64) @ lin[0] + lin[1])
            elif proba:
                out[:, j] = est.predict_proba(X)[:, list(est.classes_).index(1.0)]
            else:
                out[:, j] = est.predict(X)
        return to_unit(out)

    return predict


def fit_svm(X, Y, p, progress):
    """Per-model RBF SVR, plus each feature's training range. An RBF kernel vanishes far from
    every training prompt, and then each model predicts its intercept: a constant routing score
    on an unseen task (llmrouter's short trivia questions sit 6 sd out on a prompt statistic).
    Prediction clamps each feature into its training range first, so the distance stays finite
    and the embedding still ranks the prompts."""
    X = np.asarray(X, dtype=np.float64)
    state = _fit_per_label(_make_svr, soft_labels=False)(X, Y, p, progress)
    state.update(lo=X.min(axis=0), hi=X.max(axis=0))
    return state


_predict_svr = _predict_per_label(proba=False)


def predict_svm(state, X):
    if "lo" in state:  # artifacts trained before the clamp have no range: predicted as they were
        X = np.clip(np.asarray(X, dtype=np.float64), state["lo"], state["hi"])
    return _predict_svr(state, X)


def _make_svr(p):
    from sklearn.svm import SVR

    return SVR(kernel=p["kernel"], C=p["C"], epsilon=p["epsilon"], gamma=p["gamma"])


def _make_logreg(p):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=p["C"], max_iter=p["max_iter"])


fit_logreg = _fit_per_label(_make_logreg, soft_labels=True)
predict_logreg = _predict_per_label(proba=True)
