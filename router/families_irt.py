"""The numpy families in IRT's spirit: mf (RouteLLM's matrix factorisation), difficulty (one
shared difficulty axis, each model a logistic curve in it) and task_difficulty (the same, learned
from many tasks whose labels mean different things). Plain arrays: saved as npz, scored without
sklearn."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from router.family_base import FamilyError, sigmoid, to_unit


# ---- mf ----


def fit_mf(X, Y, p, progress):
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
        P = sigmoid(params["b"] + H @ params["V"].T)
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


def predict_mf(state, X):
    return to_unit(sigmoid(state["b"] + (X @ state["W"]) @ state["V"].T))


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
            q = sigmoid(w[0] + w[1] * x)
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


def predict_difficulty(state, X):
    h = np.asarray(X, dtype=np.float64) @ state["coef"] + state["bias"][0]
    if "logit_slope" in state:  # link: logistic (artifacts from before it carry only the line)
        return sigmoid(state["logit_intercept"][None, :] + h[:, None] * state["logit_slope"][None, :])
    return to_unit(state["intercept"][None, :] + h[:, None] * state["slope"][None, :])


# ---- task_difficulty ----
def _group_index(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    return np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)


def fit_task_difficulty(X, Y, p, progress, groups=None):
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
