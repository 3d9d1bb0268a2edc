"""Learned router families: each maps prompt embeddings to per-model predicted quality in [0, 1].

All are scikit-learn (or plain numpy arrays) so a fitted state is a dict of standard objects that
skops can save and load without pickle. A family is `fit(X, Y, params) -> state` and
`predict(state, X) -> [n, m]`. `Y` is the [n, m] score matrix; NaN marks a model not scored
on a prompt (masked where the family allows, otherwise imputed with the model's mean).

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

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tqdm import tqdm


class FamilyError(ValueError):
    pass


@dataclass(frozen=True)
class Family:
    name: str
    defaults: dict[str, Any]
    fit: Callable[[np.ndarray, np.ndarray, dict[str, Any], bool], dict[str, Any]]
    predict: Callable[[dict[str, Any], np.ndarray], np.ndarray]
    doc: str
    grouped: bool = False  # fit takes `groups=` (each record's task) as a keyword


def impute_missing(Y: np.ndarray) -> np.ndarray:
    Y = np.array(Y, dtype=float)
    means = np.nanmean(np.where(np.isnan(Y).all(axis=0), 0.5, Y), axis=0) if Y.size else np.zeros(Y.shape[1])
    means = np.where(np.isnan(means), 0.5, means)
    idx = np.where(np.isnan(Y))
    Y[idx] = means[idx[1]]
    return Y


_EDGE = 0.02  # predictions inside [_EDGE, 1 - _EDGE] are kept as they are


def _clip(P: np.ndarray) -> np.ndarray:
    """A predicted quality onto (0, 1), keeping its order. A hard clip gave every prompt of an
    unseen task the same 1.0 (or 0.0) for both models wherever a regressor overshot (the mlp and
    svm families on 95-99% of llmrouter's trivia_qa and commonsense_qa prompts): a constant
    routing score. Inside [0.02, 0.98] nothing changes; beyond, a hyperbolic tail that meets it
    with slope 1 and approaches 0 or 1 without reaching it (an overshoot of 100 is still told
    from one of 99), so the order survives."""
    P = np.asarray(P, dtype=np.float64)
    if P.size and _EDGE <= P.min() and P.max() <= 1.0 - _EDGE:
        return P  # the usual case on a routing decision: nothing to map
    over = np.maximum(P - (1.0 - _EDGE), 0.0) / _EDGE
    under = np.maximum(_EDGE - P, 0.0) / _EDGE
    return np.where(over > 0, 1.0 - _EDGE / (1.0 + over), np.where(under > 0, _EDGE / (1.0 + under), P))


# ---- knn ----
def _fit_knn(X, Y, p, progress):
    from sklearn.neighbors import KNeighborsRegressor

    k = int(min(p["n_neighbors"], len(X)))
    model = KNeighborsRegressor(n_neighbors=k, weights=p["weights"], algorithm="brute")
    model.fit(X, impute_missing(Y))
    return {"model": model}


def _predict_knn(state, X):
    P = state["model"].predict(X)
    return _clip(P.reshape(len(X), -1))


# ---- mlp ----
def _fit_mlp(X, Y, p, progress):
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


def _predict_mlp(state, X):
    return _clip(state["model"].predict(X).reshape(len(X), -1))


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
                out[:, j] = _sigmoid(np.asarray(X, dtype=np.float64) @ lin[0] + lin[1])
            elif proba:
                out[:, j] = est.predict_proba(X)[:, list(est.classes_).index(1.0)]
            else:
                out[:, j] = est.predict(X)
        return _clip(out)

    return predict


def _fit_svm(X, Y, p, progress):
    """Per-model RBF SVR, plus each feature's training range. An RBF kernel vanishes far from
    every training prompt, and then each model predicts its intercept: a constant routing score
    on an unseen task (llmrouter's short trivia questions sit 6 sd out on a prompt statistic).
    Prediction clamps each feature into its training range first, so the distance stays finite
    and the embedding still ranks the prompts."""
    X = np.asarray(X, dtype=np.float64)
    state = _fit_per_label(_make_svr, soft_labels=False)(X, Y, p, progress)
    state.update(lo=X.min(axis=0), hi=X.max(axis=0))
    return state


def _predict_svm(state, X):
    if "lo" in state:  # artifacts trained before the clamp have no range: predicted as they were
        X = np.clip(np.asarray(X, dtype=np.float64), state["lo"], state["hi"])
    return _predict_per_label(proba=False)(state, X)


def _make_svr(p):
    from sklearn.svm import SVR

    return SVR(kernel=p["kernel"], C=p["C"], epsilon=p["epsilon"], gamma=p["gamma"])


def _make_logreg(p):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=p["C"], max_iter=p["max_iter"])


# ---- mf ----
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _fit_mf(X, Y, p, progress):
    rng = np.random.default_rng(p["random_state"])
    n, d = X.shape
    m = Y.shape[1]
    k = int(p["rank"])
    mask = ~np.isnan(Y)
    T = np.where(mask, Y, 0.0)
    prior = np.clip(np.nanmean(np.where(mask, Y, np.nan), axis=0), 1e-3, 1 - 1e-3)
    params = {
        "W": rng.normal(0, 1 / np.sqrt(d), (d, k)),
        "V": rng.normal(0, 1 / np.sqrt(k), (m, k)),
        "b": np.log(prior / (1 - prior)),
    }
    state = {name: (np.zeros_like(v), np.zeros_like(v)) for name, v in params.items()}
    lr, lam, b1, b2 = p["learning_rate"], p["l2"], 0.9, 0.999
    count = max(mask.sum(), 1)
    for t in tqdm(range(1, int(p["epochs"]) + 1), desc="fitting mf", disable=not progress):
        H = X @ params["W"]  # [n, k]
        P = _sigmoid(params["b"] + H @ params["V"].T)
        G = np.where(mask, P - T, 0.0) / count  # dBCE/dlogit
        grads = {
            "b": G.sum(axis=0),
            "V": G.T @ H + lam * params["V"],
            "W": X.T @ (G @ params["V"]) + lam * params["W"],
        }
        for name, g in grads.items():
            m1, m2 = state[name]
            m1 = b1 * m1 + (1 - b1) * g
            m2 = b2 * m2 + (1 - b2) * g * g
            state[name] = (m1, m2)
            params[name] = params[name] - lr * (m1 / (1 - b1**t)) / (np.sqrt(m2 / (1 - b2**t)) + 1e-8)
    return {k_: np.asarray(v, dtype=np.float64) for k_, v in params.items()}


def _predict_mf(state, X):
    return _clip(_sigmoid(state["b"] + (X @ state["W"]) @ state["V"].T))


# ---- difficulty ----
def fit_difficulty(X, Y, p, progress):
    from sklearn.linear_model import Ridge

    if p.get("link", "linear") not in ("linear", "logistic"):
        raise FamilyError(f"difficulty link must be 'logistic' or 'linear', got {p['link']!r}")

    mask = ~np.isnan(Y)
    rows = mask.any(axis=1)
    ease = np.nanmean(np.where(mask, Y, np.nan)[rows], axis=1)  # mean score over the models scored
    ridge = Ridge(alpha=p["alpha"]).fit(X[rows], ease)
    h = ridge.predict(X)
    intercept, slope = np.zeros(Y.shape[1]), np.zeros(Y.shape[1])
    for j in range(Y.shape[1]):
        keep = mask[:, j]
        y = Y[keep, j]
        hj = h[keep]
        intercept[j] = float(y.mean()) if len(y) else 0.5
        var = float(np.var(hj)) if len(y) >= 5 else 0.0
        if var > 0:
            # least squares slope, shrunk toward 0 (the model's prior) as evidence is thin
            slope[j] = float(np.mean((hj - hj.mean()) * (y - y.mean())) / var) * len(y) / (len(y) + p["shrink"])
            intercept[j] -= slope[j] * float(hj.mean())
    state = {"coef": np.asarray(ridge.coef_, dtype=np.float64), "bias": np.array([float(ridge.intercept_)]),
             "intercept": intercept, "slope": slope}
    if p.get("link", "linear") == "logistic":
        state.update(_logistic_lines(h, Y, mask, p["shrink"]))
    return state


def _logistic_lines(h: np.ndarray, Y: np.ndarray, mask: np.ndarray, shrink: float, iters: int = 25) -> dict[str, np.ndarray]:
    """Per model, quality = sigmoid(a + b * h) (2PL IRT on the predicted difficulty h), fitted by
    Newton steps on the (fractional) cross-entropy, b shrunk toward 0 as the linear slope is.
    Unlike a line clipped to [0, 1], it never saturates to one value: on a task easier (or
    harder) than anything seen, two models' predicted qualities still differ by prompt, where the
    clipped line gave both 1.0 (a constant score, e.g. 91% of AlpacaEval chat prompts)."""
    a, b = np.zeros(Y.shape[1]), np.zeros(Y.shape[1])
    for j in range(Y.shape[1]):
        keep = mask[:, j]
        y, x = Y[keep, j], h[keep]
        if len(y) < 5:
            a[j] = _logit(float(y.mean()) if len(y) else 0.5)
            continue
        lam_b = shrink * float(np.var(x)) * 0.25 + 1e-9
        lam_a = 1e-3 * len(y)  # keeps a finite for a model that is always (or never) right
        w = np.array([_logit(float(y.mean())), 0.0])
        for _ in range(iters):
            q = _sigmoid(w[0] + w[1] * x)
            r = q - y
            g = np.array([r.sum() + lam_a * w[0], (r * x).sum() + lam_b * w[1]])
            v = q * (1 - q)
            H = np.array([[v.sum() + lam_a, (v * x).sum()], [(v * x).sum(), (v * x * x).sum() + lam_b]])
            step = np.linalg.solve(H, g)
            w = w - step
            if np.abs(step).max() < 1e-8:
                break
        a[j], b[j] = w
    return {"logit_intercept": a, "logit_slope": b}


def _logit(q: float) -> float:
    q = min(max(q, 1e-3), 1 - 1e-3)
    return float(np.log(q / (1 - q)))


def _predict_difficulty(state, X):
    h = np.asarray(X, dtype=np.float64) @ state["coef"] + state["bias"][0]
    if "logit_slope" in state:  # link: logistic (artifacts from before it carry only the line)
        return _sigmoid(state["logit_intercept"][None, :] + h[:, None] * state["logit_slope"][None, :])
    return _clip(state["intercept"][None, :] + h[:, None] * state["slope"][None, :])


# ---- task_difficulty ----
def _group_index(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    return np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)


def _fit_task_difficulty(X, Y, p, progress, groups=None):
    """Difficulty learned across tasks whose labels mean different things (0/1, F1, judge
    scores, win rates): the ridge target is each prompt's mean score standardised within its task
    (z-score), every task weighs the same, and each model's slope on the predicted difficulty
    comes from within-task variation only (task means removed), so a task where a model is
    simply better or worse overall never reads as "this model gains on easy prompts"."""
    X = np.asarray(X, dtype=np.float64)
    mask = ~np.isnan(Y)
    rows = mask.any(axis=1)
    g = _group_index(groups, len(X))
    ease = np.full(len(X), np.nan)
    ease[rows] = np.nanmean(np.where(mask, Y, np.nan)[rows], axis=1)
    z = np.zeros(len(X))
    w = np.zeros(len(X))
    for k in np.unique(g[rows]):
        m = rows & (g == k)
        sd = float(ease[m].std())
        z[m] = (ease[m] - ease[m].mean()) / (sd if sd > 1e-9 else 1.0)
        w[m] = 1.0 / m.sum()
    w = w / w[rows].mean()
    Xr, zr, wr = X[rows], z[rows], w[rows]
    mu_x = np.average(Xr, axis=0, weights=wr)
    Xc = (Xr - mu_x) * np.sqrt(wr)[:, None]
    coef = np.linalg.solve(Xc.T @ Xc + p["alpha"] * np.eye(X.shape[1]), Xc.T @ (zr * np.sqrt(wr)))
    bias = float(np.average(zr, weights=wr) - mu_x @ coef)
    h = X @ coef + bias
    intercept, slope = np.zeros(Y.shape[1]), np.zeros(Y.shape[1])
    for j in range(Y.shape[1]):
        keep = mask[:, j]
        y, hj, gj = Y[keep, j], h[keep], g[keep]
        intercept[j] = float(y.mean()) if len(y) else 0.5
        if len(y) < 5:
            continue
        yc, hc = y.copy(), hj.copy()
        for k in np.unique(gj):  # within-task: remove each task's mean of both
            m = gj == k
            yc[m] -= yc[m].mean()
            hc[m] -= hc[m].mean()
        var = float(np.sum(hc * hc))
        if var > 0:
            slope[j] = float(np.sum(hc * yc) / var) * len(y) / (len(y) + p["shrink"])
            intercept[j] -= slope[j] * float(hj.mean())
    return {"coef": coef, "bias": np.array([bias]), "intercept": intercept, "slope": slope}


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
    return _clip(np.mean(preds, axis=0))


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
    mlp = _fit_mlp(X, Y, dict(FAMILIES["mlp"].defaults), progress)["model"]
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
    P = _predict_difficulty({k[len("difficulty_"):]: v for k, v in state.items() if k.startswith("difficulty_")}, X)
    near = familiar(state, X)
    if not near.any():  # novel traffic costs difficulty + the gate only
        return P, near
    H, i = X[near], 0
    while f"mlp_w{i + 1}" in state:  # sklearn's MLPRegressor: relu hidden layers, identity output
        H = np.maximum(H @ state[f"mlp_w{i}"] + state[f"mlp_b{i}"], 0.0)
        i += 1
    P_mlp = _clip(H @ state[f"mlp_w{i}"] + state[f"mlp_b{i}"])
    # KNeighborsRegressor(brute, uniform): mean score of the k nearest (squared distance up to a per-row constant)
    d2 = state["knn_sq"][None, :] - 2 * X[near] @ state["knn_x"].T
    k = int(state["knn_k"][0])
    P_knn = _clip(state["knn_y"][np.argpartition(d2, k - 1, axis=1)[:, :k]].mean(axis=1))
    P[near] = _clip((P[near] + P_mlp + P_knn) / 3.0)  # the ensemble family with its default members
    return P, near


def _predict_gated(state, X):
    return predict_gated(state, X)[0]


FAMILIES: dict[str, Family] = {
    "knn": Family("knn", {"n_neighbors": 40, "weights": "uniform"}, _fit_knn, _predict_knn,
                  "k nearest neighbours' mean score"),
    "mlp": Family("mlp", {"hidden_layer_sizes": [128], "alpha": 1e-3, "learning_rate_init": 1e-3,
                          "max_iter": 300, "random_state": 0}, _fit_mlp, _predict_mlp,
                  "one MLP regressor with an output per model"),
    "svm": Family("svm", {"kernel": "rbf", "C": 1.0, "epsilon": 0.1, "gamma": "scale"},
                  _fit_svm, _predict_svm,
                  "one RBF support-vector regressor per model"),
    "logreg": Family("logreg", {"C": 1.0, "max_iter": 1000}, _fit_per_label(_make_logreg, soft_labels=True),
                     _predict_per_label(proba=True), "one logistic regression per model"),
    "mf": Family("mf", {"rank": 32, "epochs": 300, "learning_rate": 0.01, "l2": 1e-4, "random_state": 0},
                 _fit_mf, _predict_mf, "RouteLLM-style bilinear matrix factorisation"),
    "difficulty": Family("difficulty", {"alpha": 100.0, "shrink": 20.0, "link": "logistic"}, fit_difficulty, _predict_difficulty,
                         "shared prompt-difficulty regression, per-model quality linear in it"),
    "task_difficulty": Family("task_difficulty", {"alpha": 10.0, "shrink": 20.0}, _fit_task_difficulty,
                              _predict_difficulty, "difficulty standardised per task, for many tasks and label kinds",
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
