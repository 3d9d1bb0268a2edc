"""The broad protocol's designs: `fit(X, ds, rows, strong, weak) -> score(Z)` (higher = call the
strong model), plus the shipped families fitted as `doka router train` fits them. Hyper-parameters
are chosen inside the training fold only (`broad_data.inner_alpha`)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from training.broad_contrastive import ContrastiveFit, fit_contrastive
from training.broad_data import (PERMITTED, inner_alpha, column, difficulty_target, fit_ridge, model_targets,
                                 task_weights)
from training.dataset import Dataset


def design_difficulty(X, ds, rows, strong, weak, tune=True) -> Callable[[np.ndarray], np.ndarray]:
    """The issue's baseline: ridge on the embedding, target = per-task standardised mean score."""
    y = difficulty_target(ds, rows)
    tasks = column(ds, "task")[rows]
    w = task_weights(tasks)
    alpha = inner_alpha(X[rows], y, tasks, w) if tune else 10.0
    coef, b = fit_ridge(X[rows], y, alpha, w)
    return lambda Z: -(Z @ coef + b)  # harder prompt -> strong model


def design_pair_heads(X, ds, rows, strong, weak, tune=True) -> Callable[[np.ndarray], np.ndarray]:
    """Per-model heads: one ridge per model on its per-task standardised score (rows it labels);
    the score is sd(strong) * head(strong) - sd(weak) * head(weak) (sd: the model's mean
    within-task spread in training, back to the [0, 1] scale) plus half the difficulty score,
    where both models have heads, else the difficulty design."""
    S = model_targets(ds, rows)
    tasks = column(ds, "task")[rows]
    heads, spread = {}, {}
    for m in (strong, weak):
        j = ds.labels.index(m)
        ok = ~np.isnan(S[:, j])
        if ok.sum() >= 200 and len(set(tasks[ok])) >= 3:
            heads[m] = fit_ridge(X[rows][ok], S[ok, j], 10.0, task_weights(tasks[ok]))
            raw = ds.scores[rows[ok], j]
            spread[m] = float(np.mean([raw[tasks[ok] == t].std() for t in set(tasks[ok])]))
    diff = design_difficulty(X, ds, rows, strong, weak, tune)
    if len(heads) < 2:
        return diff
    (cs, bs), (cw, bw) = heads[strong], heads[weak]
    ss, sw = spread[strong], spread[weak]
    # (the first pass returned head(weak) - head(strong): an inverted score, in-sample APGR < 0.5)
    return lambda Z: ss * (Z @ cs + bs) - sw * (Z @ cw + bw) + 0.5 * diff(Z)


def design_irt(X, ds, rows, strong, weak, tune=True, dim: int = 8, epochs: int = 200) -> Callable[[np.ndarray], np.ndarray]:
    """IRT / matrix factorisation: score(prompt, model) = <theta_m, W x> + b_m + (v . x), fit by
    full-batch gradient steps on every labelled (prompt, model) pair (per-task standardised);
    routed on predicted(strong) - predicted(weak) (the first pass had it inverted)."""
    S = model_targets(ds, rows)
    Xr = X[rows]
    mask = ~np.isnan(S)
    T = np.where(mask, S, 0.0)
    rng = np.random.default_rng(0)
    d, M = Xr.shape[1], S.shape[1]
    W = rng.normal(0, 0.01, (d, dim))
    theta = rng.normal(0, 0.1, (M, dim))
    v = np.zeros(d)
    bm = np.zeros(M)
    lam, lr, b1, b2 = 1e-4, 0.01, 0.9, 0.999
    params = [W, theta, v, bm]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    cnt = mask.sum()
    for t in range(1, epochs + 1):  # Adam, full batch
        H = Xr @ W
        P = H @ theta.T + bm + (Xr @ v)[:, None]
        E = np.where(mask, P - T, 0.0) / cnt
        grads = [Xr.T @ (E @ theta) + lam * W, E.T @ H + lam * theta, Xr.T @ E.sum(axis=1), E.sum(axis=0)]
        for i, g in enumerate(grads):
            m1[i] = b1 * m1[i] + (1 - b1) * g
            m2[i] = b2 * m2[i] + (1 - b2) * g * g
            params[i] -= lr * (m1[i] / (1 - b1**t)) / (np.sqrt(m2[i] / (1 - b2**t)) + 1e-8)
    js, jw = ds.labels.index(strong), ds.labels.index(weak)
    return lambda Z: (Z @ W) @ (theta[js] - theta[jw]) + (bm[js] - bm[jw])


_SHIPPED: dict[str, tuple[str, tuple[str, ...] | None]] = {}


def shipped_rows(design: str, ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """The training rows a PAIR_FREE design fits on: the fold's rows of its sources."""
    only = _SHIPPED[design][1]
    return rows[np.isin(column(ds, "source")[rows], only)] if only else rows


def shipped_labels(design: str, ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """Which models (a mask over `ds.labels`) the design's training rows of the fold label: an
    artifact ranks only those."""
    return ~np.isnan(ds.scores[shipped_rows(design, ds, rows)]).all(axis=0)


def shipped_fit(design: str, X: np.ndarray, ds: Dataset, rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """A PAIR_FREE design fitted once on a fold: Z -> [n, models] predicted quality; None where
    the fold leaves it nothing to train on (the RouterBench-only default when RouterBench is the
    held-out source)."""
    from router.families import get_family

    family, _ = _SHIPPED[design]
    rows = shipped_rows(design, ds, rows)
    if not len(rows):
        return None
    fam = get_family(family)
    kw = {"groups": column(ds, "task")[rows]} if fam.grouped else {}
    state = fam.fit(X[rows], ds.scores[rows], dict(fam.defaults), False, **kw)
    return lambda Z: fam.predict(state, Z)


def pair_score(predict: Callable, ds: Dataset, strong: str, weak: str) -> Callable[[np.ndarray], np.ndarray]:
    js, jw = ds.labels.index(strong), ds.labels.index(weak)
    return lambda Z: (lambda P: P[:, js] - P[:, jw])(predict(Z))


def _shipped(family: str, only_source: str | None = None, name: str | None = None,
             sources: tuple[str, ...] | None = None) -> Callable:
    """A family of router/families.py as `doka router train` fits it (raw [0, 1] scores, no task
    standardisation), on the training fold (or only its `only_source` rows): what would ship."""

    name = name or f"shipped_{family}" + (f"_{only_source}_only" if only_source else "")
    _SHIPPED[name] = (family, sources or ((only_source,) if only_source else None))

    def design(X, ds, rows, strong, weak, tune=True):
        fit = shipped_fit(name, X, ds, rows)
        if fit is None:
            raise ValueError(f"{name}: no training rows of {sources or only_source} in this fold")
        return pair_score(fit, ds, strong, weak)

    return design


def design_pairwise(X, ds, rows, strong, weak, tune=True) -> Callable[[np.ndarray], np.ndarray]:
    """Pairwise target: ridge on q(strong) - q(weak) over the training rows that label both
    (task-weighted; alpha by inner grouped CV). Only where a source labels the pair elsewhere;
    otherwise the difficulty design."""
    js, jw = ds.labels.index(strong), ds.labels.index(weak)
    ok = rows[~np.isnan(ds.scores[rows, js]) & ~np.isnan(ds.scores[rows, jw])]
    tasks = column(ds, "task")[ok]
    if len(ok) < 200 or len(set(tasks)) < 3:
        return design_difficulty(X, ds, rows, strong, weak, tune)
    y = ds.scores[ok, js] - ds.scores[ok, jw]
    w = task_weights(tasks)
    alpha = inner_alpha(X[ok], y, tasks, w) if tune and len(set(tasks)) >= 4 else 10.0
    coef, b = fit_ridge(X[ok], y, alpha, w)
    return lambda Z: Z @ coef + b


def contrastive_or_difficulty(fit: ContrastiveFit, X, ds, rows, strong, weak, tune) -> Callable[[np.ndarray], np.ndarray]:
    """sim(prompt, strong) - sim(prompt, weak); the difficulty design where the training fold
    labels either model too rarely to have learned its embedding (a leave-one-source-out fold
    whose models only that source labels)."""
    return fit.pair_score(strong, weak) or design_difficulty(X, ds, rows, strong, weak, tune)


def design_contrastive(X, ds, rows, strong, weak, tune=True) -> Callable[[np.ndarray], np.ndarray]:
    """RouterDC-style dual contrastive router (see ContrastiveConfig)."""
    return contrastive_or_difficulty(fit_contrastive(X, ds, rows, tune), X, ds, rows, strong, weak, tune)


DESIGNS: dict[str, Callable] = {"shipped_difficulty": _shipped("difficulty"),
                                "shipped_difficulty_routerbench_only": _shipped("difficulty", "routerbench"),
                                "shipped_mf": _shipped("mf"),
                                "shipped_task_difficulty": _shipped("task_difficulty"),
                                # trained only on what `doka router bootstrap` may use without an opt-in
                                "shipped_task_difficulty_permitted": _shipped("task_difficulty", name="shipped_task_difficulty_permitted",
                                                                              sources=PERMITTED),
                                "shipped_difficulty_permitted": _shipped("difficulty", name="shipped_difficulty_permitted",
                                                                         sources=PERMITTED),
                                "shipped_mf_permitted": _shipped("mf", name="shipped_mf_permitted", sources=PERMITTED),
                                "difficulty": design_difficulty, "pair_heads": design_pair_heads, "irt": design_irt,
                                "pairwise": design_pairwise, "contrastive": design_contrastive}
# fitted once per fold, whatever pair a held-out task is scored on (the shipped families predict every model)
PAIR_FREE = set(_SHIPPED)
# fitted once per fold too (every model's embedding at once), scored on each pair it meets
FOLD_FITS: dict[str, Callable] = {"contrastive": fit_contrastive}
