"""Broad routing evaluation over the combined data (training.sources): leave-one-task-out over
every task and leave-one-source-out, each held-out task scored on gpt-4-1106-preview vs
mixtral-8x7b-chat where it labels both, else its own strongest vs weakest model; `pooled` scores
each held-out source as one mixed set, as MMLU or MT-Bench mix subjects.

Designs are small functions `fit(X, ds) -> predict(X) -> score` (higher = call the strong
model). Hyper-parameters are chosen only inside the training fold (grouped by task), never on
the fold being scored. Prompts are embedded once through `training.embeddings.embed_texts`
(cached on disk by text hash), the same featurizer call the served router makes.

    python -m training.broad --data .doka/data/combined_all.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from training.dataset import Dataset, load_jsonl
from training.evaluate import constant_scores
from training.metrics import two_model_report
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


def _inner_alpha(X, y, tasks, w, k: int = 4) -> float:
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


def design_difficulty(X, ds, rows, strong, weak, tune=True) -> Callable[[np.ndarray], np.ndarray]:
    """The issue's baseline: ridge on the embedding, target = per-task standardised mean score."""
    y = difficulty_target(ds, rows)
    tasks = column(ds, "task")[rows]
    w = task_weights(tasks)
    alpha = _inner_alpha(X[rows], y, tasks, w) if tune else 10.0
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


def _shipped_fit(design: str, X: np.ndarray, ds: Dataset, rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """A PAIR_FREE design fitted once on a fold: Z -> [n, models] predicted quality; None where
    the fold leaves it nothing to train on (the RouterBench-only default when RouterBench is the
    held-out source)."""
    from router.families import get_family

    family, only = _SHIPPED[design]
    if only:
        rows = rows[np.isin(column(ds, "source")[rows], only)]
    if not len(rows):
        return None
    fam = get_family(family)
    kw = {"groups": column(ds, "task")[rows]} if fam.grouped else {}
    state = fam.fit(X[rows], ds.scores[rows], dict(fam.defaults), False, **kw)
    return lambda Z: fam.predict(state, Z)


def _pair_score(predict: Callable, ds: Dataset, strong: str, weak: str) -> Callable[[np.ndarray], np.ndarray]:
    js, jw = ds.labels.index(strong), ds.labels.index(weak)
    return lambda Z: (lambda P: P[:, js] - P[:, jw])(predict(Z))


def _shipped(family: str, only_source: str | None = None, name: str | None = None,
             sources: tuple[str, ...] | None = None) -> Callable:
    """A family of router/families.py as `doka router train` fits it (raw [0, 1] scores, no task
    standardisation), on the training fold (or only its `only_source` rows): what would ship."""

    name = name or f"shipped_{family}" + (f"_{only_source}_only" if only_source else "")
    _SHIPPED[name] = (family, sources or ((only_source,) if only_source else None))

    def design(X, ds, rows, strong, weak, tune=True):
        fit = _shipped_fit(name, X, ds, rows)
        if fit is None:
            raise ValueError(f"{name}: no training rows of {sources or only_source} in this fold")
        return _pair_score(fit, ds, strong, weak)

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
    alpha = _inner_alpha(X[ok], y, tasks, w) if tune and len(set(tasks)) >= 4 else 10.0
    coef, b = fit_ridge(X[ok], y, alpha, w)
    return lambda Z: Z @ coef + b


# --- RouterDC-style dual contrastive training (Chen et al. 2024) on frozen features ------------

@dataclass(frozen=True)
class ContrastiveConfig:
    """RouterDC's knobs, scaled to a frozen encoder: a linear projection of the cached prompt
    features and one embedding per model, trained with the sample-LLM loss (top-k models of each
    prompt against its bottom-k) plus `ss_weight` times the sample-sample loss (k-means clusters of
    the training prompts pulled together)."""

    dim: int = 32
    top_k: int = 3
    tau: float = 0.2
    ss_weight: float = 1.0
    clusters: int = 8
    epochs: int = 8
    batch: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-4
    min_labels: int = 200  # a model labelled on fewer training prompts has no trustworthy embedding
    seed: int = 0


CONTRASTIVE_GRID = (ContrastiveConfig(ss_weight=0.0), ContrastiveConfig(ss_weight=1.0))


def contrastive_pairs(scores: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt, its k best and k worst labelled models (ties broken at random) and which
    (positive, negative) pairs count: only where the positive scored strictly higher, so a 0/1
    task's tied models are never pushed apart. Returns pos [n, k], neg [n, k] model indices and
    valid [n, k, k]; a prompt with fewer than two distinct scores has no valid pair."""
    n, M = scores.shape
    rng = np.random.default_rng(seed)
    jitter = rng.random((n, M)) * 1e-6
    lab = ~np.isnan(scores)
    key = np.where(lab, np.nan_to_num(scores) + jitter, -np.inf)
    order = np.argsort(-key, axis=1)  # labelled best first, unlabelled last
    count = lab.sum(axis=1)
    kk = np.minimum(k, count // 2)
    pos = order[:, :k]
    last = np.clip(count[:, None] - 1 - np.arange(k)[None, :], 0, M - 1)
    neg = np.take_along_axis(order, last, axis=1)
    slot = np.arange(k)[None, :] < kk[:, None]
    qp = np.take_along_axis(np.nan_to_num(scores), pos, axis=1)
    qn = np.take_along_axis(np.nan_to_num(scores), neg, axis=1)
    valid = slot[:, :, None] & slot[:, None, :] & (qp[:, :, None] > qn[:, None, :])
    return pos, neg, valid


class ContrastiveFit:
    """A fitted contrastive router: `predict(Z)` is [n, models] cosine similarity of the
    projected prompt and each model's embedding; `trained` the models with enough labels."""

    def __init__(self, mu: np.ndarray, sd: np.ndarray, W: np.ndarray, b: np.ndarray, E: np.ndarray, trained: set[str],
                 labels: list[str], config: ContrastiveConfig):
        self.mu, self.sd, self.W, self.b, self.E, self.trained, self.labels = mu, sd, W, b, E, trained, labels
        self.config = config

    def predict(self, Z: np.ndarray) -> np.ndarray:
        H = ((Z - self.mu) / self.sd) @ self.W + self.b
        H /= np.linalg.norm(H, axis=1, keepdims=True) + 1e-12
        return H @ self.E.T

    def pair_score(self, strong: str, weak: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """sim(prompt, strong) - sim(prompt, weak); None where either model was not learned."""
        if strong not in self.trained or weak not in self.trained:
            return None
        js, jw = self.labels.index(strong), self.labels.index(weak)
        return lambda Z: (lambda S: S[:, js] - S[:, jw])(self.predict(Z))


def fit_contrastive_once(X: np.ndarray, ds: Dataset, rows: np.ndarray, cfg: ContrastiveConfig) -> ContrastiveFit:
    import torch
    from sklearn.cluster import MiniBatchKMeans

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    scores = ds.scores[rows]
    counts = (~np.isnan(scores)).sum(axis=0)
    trained = {m for j, m in enumerate(ds.labels) if counts[j] >= cfg.min_labels}
    pos, neg, valid = contrastive_pairs(scores, cfg.top_k, cfg.seed)
    keep = valid.any(axis=(1, 2))
    Xr = X[rows]
    mu, sd = Xr.mean(axis=0), Xr.std(axis=0) + 1e-6
    Xs = ((Xr - mu) / sd)[keep].astype(np.float32)
    tasks = column(ds, "task")[rows][keep]
    w = task_weights(tasks).astype(np.float32)
    # sample-sample: clusters of the training fold's own prompts (never the scored fold's)
    cl = MiniBatchKMeans(cfg.clusters, random_state=cfg.seed, n_init=1, batch_size=2048).fit_predict(Xs) \
        if cfg.ss_weight > 0 else np.zeros(len(Xs), dtype=int)
    tX, tpos, tneg = torch.from_numpy(Xs), torch.from_numpy(pos[keep]), torch.from_numpy(neg[keep])
    tval, tw, tcl = torch.from_numpy(valid[keep]), torch.from_numpy(w), torch.from_numpy(cl)
    proj = torch.nn.Linear(Xs.shape[1], cfg.dim)
    E = torch.nn.Parameter(torch.randn(len(ds.labels), cfg.dim) * 0.1)
    opt = torch.optim.AdamW([*proj.parameters(), E], lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(Xs), generator=gen).split(cfg.batch):
            h = torch.nn.functional.normalize(proj(tX[idx]), dim=1)
            e = torch.nn.functional.normalize(E, dim=1)
            s = h @ e.T / cfg.tau                                             # [B, M]
            sp, sn = s.gather(1, tpos[idx]), s.gather(1, tneg[idx])            # [B, k]
            v = tval[idx]
            neg_lse = torch.logsumexp(sn[:, None, :].expand(-1, sp.shape[1], -1).masked_fill(~v, -1e9), dim=2)
            has = v.any(dim=2)
            # InfoNCE per positive: -log(e^sp / (e^sp + sum over its negatives e^sn))
            l_sl = torch.nn.functional.softplus(neg_lse - sp).masked_fill(~has, 0).sum(1) / has.sum(1).clamp(min=1)
            loss = (l_sl * tw[idx]).mean()
            if cfg.ss_weight > 0:
                c = tcl[idx]
                same = (c[:, None] == c[None, :]) & ~torch.eye(len(idx), dtype=torch.bool)
                hh = h @ h.T / cfg.tau
                pick = torch.rand(hh.shape, generator=gen).masked_fill(~same, -1).argmax(dim=1)
                ok = same.any(dim=1)
                s_pos = hh.gather(1, pick[:, None]).squeeze(1)
                other = (c[:, None] != c[None, :])
                lse = torch.logsumexp(torch.cat([s_pos[:, None], hh.masked_fill(~other, -1e9)], dim=1), dim=1)
                loss = loss + cfg.ss_weight * ((lse - s_pos) * ok).sum() / ok.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        W = proj.weight.T.numpy().astype(np.float64)
        b = proj.bias.numpy().astype(np.float64)
        En = torch.nn.functional.normalize(E, dim=1).numpy().astype(np.float64)
    return ContrastiveFit(mu, sd, W, b, En, trained, list(ds.labels), cfg)


def _inner_contrastive(X: np.ndarray, ds: Dataset, rows: np.ndarray, k: int = 3) -> ContrastiveConfig:
    """The config whose scores best track q(strong) - q(weak) on tasks held out inside the training
    fold (grouped by task, k folds), each inner task scored on its own pair as the outer protocol
    does (scoring_pair): mean per-task Pearson r. Never sees the outer held-out fold."""
    tasks = column(ds, "task")[rows]
    uniq = np.array(sorted(set(tasks)))
    parts = np.array_split(np.random.default_rng(0).permutation(uniq), k)
    best, best_r = CONTRASTIVE_GRID[0], -np.inf
    for cfg in CONTRASTIVE_GRID:
        rs = []
        for p in parts:
            te = np.isin(tasks, p)
            fit = fit_contrastive_once(X, ds, rows[~te], cfg)
            for t in p:
                tr = rows[tasks == t]
                strong, weak = scoring_pair(ds, tr)
                score_fn = fit.pair_score(strong, weak)
                js, jw = ds.labels.index(strong), ds.labels.index(weak)
                y = ds.scores[tr, js] - ds.scores[tr, jw]
                ok = ~np.isnan(y)
                if score_fn is None or ok.sum() <= 5 or y[ok].std() == 0:
                    continue
                s = score_fn(X[tr[ok]])
                if s.std() > 0:
                    rs.append(np.corrcoef(s, y[ok])[0, 1])
        r = float(np.mean(rs)) if rs else -np.inf
        if r > best_r:
            best, best_r = cfg, r
    return best


def fit_contrastive(X: np.ndarray, ds: Dataset, rows: np.ndarray, tune: bool = True) -> ContrastiveFit:
    """Fit on the training rows, the config chosen by inner grouped CV on those rows only."""
    cfg = _inner_contrastive(X, ds, rows) if tune else ContrastiveConfig()
    return fit_contrastive_once(X, ds, rows, cfg)


def _contrastive_or_difficulty(fit: ContrastiveFit, X, ds, rows, strong, weak, tune) -> Callable[[np.ndarray], np.ndarray]:
    """sim(prompt, strong) - sim(prompt, weak); the difficulty design where the training fold
    labels either model too rarely to have learned its embedding (a leave-one-source-out fold
    whose models only that source labels)."""
    return fit.pair_score(strong, weak) or design_difficulty(X, ds, rows, strong, weak, tune)


def design_contrastive(X, ds, rows, strong, weak, tune=True) -> Callable[[np.ndarray], np.ndarray]:
    """RouterDC-style dual contrastive router (see ContrastiveConfig)."""
    return _contrastive_or_difficulty(fit_contrastive(X, ds, rows, tune), X, ds, rows, strong, weak, tune)


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


def evaluate_folds(X: np.ndarray, ds: Dataset, folds: list[Fold], design: str, bootstrap: int = 200,
                   pooled: bool = False) -> list[dict]:
    """Fit on each fold's training rows (once per scoring pair), score every task of the held-out
    rows on its own pair: a leave-one-source-out fold yields one row per task of that source.
    `pooled`: the fold's held-out rows are scored as one mixed set instead (`<fold> (pooled)`), as
    the benchmarks routers are judged on mix subjects and categories (MMLU, MT-Bench): ranking
    *between* kinds of prompt counts there, and a per-task score cannot see it."""
    tasks = column(ds, "task")
    if pooled:
        tasks = np.array(tasks, dtype=object)
        for f in folds:
            tasks[f.test] = f"{f.name} (pooled)"
    out = []
    for f in folds:
        fitted: dict[tuple[str, str], Callable] = {}
        pair_free = untrainable = None
        fold_fit = None
        for task in sorted(set(tasks[f.test])):
            rows = f.test[tasks[f.test] == task]
            strong, weak = scoring_pair(ds, rows)
            js, jw = ds.labels.index(strong), ds.labels.index(weak)
            keep = rows[~np.isnan(ds.scores[rows, js]) & ~np.isnan(ds.scores[rows, jw])]
            qs, qw = ds.scores[keep, js], ds.scores[keep, jw]
            if len(keep) < 30 or qs.mean() == qw.mean():
                continue
            if (strong, weak) not in fitted:
                if design in FOLD_FITS:
                    if fold_fit is None:
                        fold_fit = FOLD_FITS[design](X, ds, f.train)
                        print(f"{design}: fold {f.name}: {fold_fit.config}", flush=True)
                    fitted[(strong, weak)] = _contrastive_or_difficulty(fold_fit, X, ds, f.train, strong, weak, True)
                elif design in PAIR_FREE:
                    if pair_free is None and not untrainable:
                        pair_free = _shipped_fit(design, X, ds, f.train)
                        untrainable = pair_free is None
                    if untrainable:  # nothing of its sources left in training: the fold is not scored
                        print(f"{design}: fold {f.name} leaves it no training rows; not scored", flush=True)
                        break
                    fitted[(strong, weak)] = _pair_score(pair_free, ds, strong, weak)
                else:
                    fitted[(strong, weak)] = DESIGNS[design](X, ds, f.train, strong, weak)
            score = fitted[(strong, weak)](X[keep])
            rep = two_model_report(score, qs, qw, bootstrap=bootstrap)
            r = rep["router"]
            if r["apgr"] is None:
                continue
            out.append({"fold": str(f.name), "held_out": str(task), "n": int(len(keep)), "pair": f"{strong} vs {weak}",
                        "apgr": r["apgr"], "se": r.get("apgr_se"), "ci95": r.get("apgr_ci95"),
                        "score_std": float(np.std(score)), "constant": constant_scores(score),
                        "random": rep["random"]["apgr"]})
    return out


def summary(rows: list[dict]) -> dict:
    a = np.array([r["apgr"] for r in rows if r["apgr"] is not None])
    if not len(a):
        return {"median": float("nan"), "mean": float("nan"), "worst": float("nan"), "folds": 0, "tasks_200_ci_below_0.5": []}
    big_below = [str(r["held_out"]) for r in rows if r["n"] >= 200 and r["ci95"] and r["ci95"][1] < 0.5]
    return {"median": float(np.median(a)), "mean": float(a.mean()), "worst": float(a.min()), "folds": len(a),
            "tasks_200_ci_below_0.5": big_below, "constant_scores": [str(r["held_out"]) for r in rows if r.get("constant")]}


def paired_difference(a: list[dict], b: list[dict]) -> dict:
    """Design a minus design b over the held-out tasks both scored: mean per-task APGR gain, its
    SE over tasks, a 95% interval and the win count; the bar for "beats" (a gain whose interval
    excludes 0), since the medians of near-random designs move by noise."""
    bb = {r["held_out"]: r["apgr"] for r in b}
    d = np.array([r["apgr"] - bb[r["held_out"]] for r in a if r["held_out"] in bb])
    if not len(d):
        return {"tasks": 0}
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"tasks": int(len(d)), "mean_gain": float(d.mean()), "se": se,
            "ci95": [float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se)], "wins": int((d > 0).sum())}


def markdown(rows: list[dict]) -> str:
    lines = ["| held out | n | pair | APGR ± SE | 95% interval |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        ci = f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r["ci95"] else "n/a"
        lines.append(f"| {r['held_out']} | {r['n']} | {r['pair']} | {r['apgr']:.3f} ± {r['se'] or 0:.3f} | {ci} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=".doka/data/combined_all.jsonl")
    ap.add_argument("--designs", nargs="+", default=["difficulty"], choices=sorted(DESIGNS))
    ap.add_argument("--by", nargs="+", default=["task", "source"], choices=["task", "source", "pooled"],
                    help="leave-one-task-out, leave-one-source-out, or `pooled`: leave-one-source-out with each "
                         "held-out source scored as one mixed set (gpt-4 vs mixtral where it labels both)")
    ap.add_argument("--featurizer", default=BROAD_FEATURIZER_ID)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--out", default=".doka/bench/broad")
    ap.add_argument("--compare", nargs=2, metavar="RESULTS.json:PROTOCOL/DESIGN",
                    help="only compare two earlier runs' rows task by task (A minus B), e.g. "
                         ".doka/bench/b1/results.json:task/pairwise .doka/bench/b2/results.json:task/difficulty")
    args = ap.parse_args(argv)
    if args.compare:
        rows = []
        for spec in args.compare:
            path, key = spec.rsplit(":", 1)
            rows.append(json.loads(Path(path).read_text())[key]["folds"])
        print(json.dumps(paired_difference(*rows), indent=1))
        return 0
    from training.embeddings import embed_texts

    ds = load_jsonl(args.data)
    X = embed_texts(ds.prompts, args.featurizer, progress=False).astype(np.float64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for by in args.by:
        folds = held_out_folds(ds, "source" if by == "pooled" else by)
        for d in args.designs:
            rows = evaluate_folds(X, ds, folds, d, args.bootstrap, pooled=by == "pooled")
            s = summary(rows)
            results[f"{by}/{d}"] = {"summary": s, "folds": rows}
            print(f"\n## {'leave-one-source-out, pooled' if by == 'pooled' else f'leave-one-{by}-out'}, {d}: median {s['median']:.3f}, mean {s['mean']:.3f}, worst "
                  f"{s['worst']:.3f} over {s['folds']} folds; 200+ prompts with 95% CI below 0.5: "
                  f"{s['tasks_200_ci_below_0.5'] or 'none'}; (nearly) constant scores on: "
                  f"{s['constant_scores'] or 'none'}\n\n{markdown(rows)}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
