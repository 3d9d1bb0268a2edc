"""The broad protocol's data side: which rows a held-out fold trains on, which pair scores a
held-out task, and the per-task standardised targets every design learns from (labels of
different kinds are never compared raw). Used by `training.broad` and its designs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.dataset import Dataset
from training.sources import SOURCES

STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-chat"
PERMITTED = tuple(k for k, s in SOURCES.items() if s.permitted)  # what bootstrap trains on without an opt-in
BROAD_FEATURIZER_ID = "minilm-l6-v2@t64"


def column(ds: Dataset, key: str) -> np.ndarray:
    return np.array([str(e.get(key, "")) for e in ds.extra])


_TASK_ALIASES = {"arc-challenge": "arc_challenge", "human_eval": "humaneval", "math_prealgebra": "math",
                 "winograde": "winogrande", "cmmlu": "cmmlu"}


def canonical_task(task: str) -> str:
    """One name for one task across sources and splits (`routerbench:arc-challenge`,
    `llmrouter:arc_challenge` and `routerdc:arc_challenge_test` are all `arc_challenge`), so
    holding a task out holds out every source's copy of it."""
    name = task.split(":", 1)[-1].lower()
    for suffix in ("_train", "_test"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _TASK_ALIASES.get(name, name)


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray  # row indices
    test: np.ndarray


def held_out_folds(ds: Dataset, by: str = "task", min_test: int = 30) -> list[Fold]:
    """One fold per value of `by` (task or source). Training drops every row whose prompt text
    equals a held-out prompt, so an exact duplicate from another source never leaks."""
    groups = column(ds, by) if by != "task" else np.array([canonical_task(t) for t in column(ds, "task")])
    prompts = np.array(ds.prompts, dtype=object)
    folds = []
    for g in sorted(set(groups)):
        test = np.flatnonzero(groups == g)
        if len(test) < min_test:
            continue
        held = set(prompts[test])
        train = np.flatnonzero((groups != g) & np.array([p not in held for p in prompts]))
        assert not held & set(prompts[train]), f"a prompt of {g!r} leaked into training"
        folds.append(Fold(g, train, test))
    return folds


def scoring_pair(ds: Dataset, rows: np.ndarray) -> tuple[str, str]:
    """gpt-4 vs mixtral where the rows label both; else the strongest and weakest model by mean
    score on these rows (models labelled on every row only). The task's own extremes, not the
    source's: a source-wide pair can be a near-tie on one task, where APGR (a ratio over the
    quality gap) is noise (routerdc code tasks gave 2.5 +- 2.8 that way)."""
    labelled = ~np.isnan(ds.scores[rows])
    full = labelled.mean(axis=0) >= 0.95
    names = [m for j, m in enumerate(ds.labels) if full[j]]
    if STRONG in names and WEAK in names:
        return STRONG, WEAK
    means = {m: float(np.nanmean(ds.scores[rows, ds.labels.index(m)])) for m in names}
    ranked = sorted(means, key=means.get)
    return ranked[-1], ranked[0]


def difficulty_target(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """Per prompt: the mean of its [0, 1] scores over the models that label it, standardised
    within its task (z-score), so a 0.5 win rate and a 0.5 accuracy are never compared raw.
    Higher = easier."""
    tasks = column(ds, "task")[rows]
    raw = np.nanmean(ds.scores[rows], axis=1)
    out = np.zeros(len(rows))
    for t in set(tasks):
        m = tasks == t
        sd = raw[m].std()
        out[m] = (raw[m] - raw[m].mean()) / (sd if sd > 1e-9 else 1.0)
    return out


def model_targets(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """[rows, models] scores standardised per task and model (NaN where unlabelled)."""
    tasks = column(ds, "task")[rows]
    S = ds.scores[rows].copy()
    for t in set(tasks):
        m = tasks == t
        block = S[m]
        mu, sd = np.nanmean(block, axis=0), np.nanstd(block, axis=0)
        with np.errstate(invalid="ignore"):
            S[m] = (block - mu) / np.where(sd > 1e-9, sd, 1.0)
    return S


def fit_ridge(X: np.ndarray, y: np.ndarray, alpha: float, w: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    w = np.ones(len(y)) if w is None else w
    mu_x = np.average(X, axis=0, weights=w)
    mu_y = float(np.average(y, weights=w))
    Xc = (X - mu_x) * np.sqrt(w)[:, None]
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ ((y - mu_y) * np.sqrt(w)))
    return coef, mu_y - mu_x @ coef


def task_weights(tasks: np.ndarray) -> np.ndarray:
    """Each task counts the same in the loss, however many prompts it has."""
    _, inv, counts = np.unique(tasks, return_inverse=True, return_counts=True)
    return 1.0 / counts[inv] * len(tasks) / len(counts)


ALPHAS = (1.0, 10.0, 100.0)


def inner_alpha(X, y, tasks, w, k: int = 4) -> float:
    """Ridge alpha chosen by grouped (by task) k-fold on the training fold only: the alpha whose
    held-out-task predictions correlate best (Spearman-free Pearson) with the target."""
    uniq = np.array(sorted(set(tasks)))
    rng = np.random.default_rng(0)
    parts = np.array_split(rng.permutation(uniq), k)
    best, best_r = ALPHAS[0], -np.inf
    for a in ALPHAS:
        rs = []
        for p in parts:
            te = np.isin(tasks, p)
            coef, b = fit_ridge(X[~te], y[~te], a, w[~te])
            pred = X[te] @ coef + b
            for t in p:
                m = tasks[te] == t
                if m.sum() > 5 and pred[m].std() > 0 and y[te][m].std() > 0:
                    rs.append(np.corrcoef(pred[m], y[te][m])[0, 1])
        r = float(np.mean(rs)) if rs else -np.inf
        if r > best_r:
            best, best_r = a, r
    return best
