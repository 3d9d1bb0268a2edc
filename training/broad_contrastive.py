"""RouterDC-style dual contrastive training (Chen et al. 2024) on frozen prompt features: the
broad protocol's `contrastive` design (docs/benchmarks.md, "third pass")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from training.broad_data import column, scoring_pair, task_weights
from training.dataset import Dataset


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


def inner_contrastive(X: np.ndarray, ds: Dataset, rows: np.ndarray, k: int = 3) -> ContrastiveConfig:
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
    cfg = inner_contrastive(X, ds, rows) if tune else ContrastiveConfig()
    return fit_contrastive_once(X, ds, rows, cfg)
