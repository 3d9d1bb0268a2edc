"""Broad protocol, seventh pass (docs/benchmarks.md): learn the strong pair's gain itself.

The held-out sets score gpt-4 vs mixtral, a strong pair. The fifth and sixth passes ranked by
difficulty and hoped that the pair's gain followed; it did on code, not on RouterBench or chat.
Here the target is the gain: on every training task, its regime pair (`broad_fifth.regime_pair`:
gpt-4 vs mixtral where labelled, else the best model at 0.6 or more against the model nearest 0.8x
of it), and per prompt q(strong) - q(weak). A ridge on it (task-weighted; alpha by grouped inner
CV on the training fold) is the router. `raw` keeps each task's mean gain (where a pair gains more
overall), `centred` removes it (only which prompt of a task gains). Tasks with no such pair (MATH:
no model reaches 0.6) teach nothing here. Beside it, `within-task, top half`: a difficulty target
from each task's better half of models only (hard for good models).

- `regime`: each held-out task on its regime pair, grouped by kind as `broad_sixth.py kinds`
  (AlpacaEval on gpt-4 vs mixtral), beside the default's axis and the within-task axis.
- `rotations`: RouterBench's held-out rotations and in distribution (train split + arenabench +
  llmrouter), the gain score as the router.
- `axes`: the same rotations with a hardness axis alone as the router (harder prompt to gpt-4):
  the default's, the within-task one, and the within-task one on the 8 statistics only. The
  shipped default instead routes on its two logistic curves, whose gap peaks mid-axis.

    python scripts/generalization/broad_seventh.py regime
    python scripts/generalization/broad_seventh.py rotations
    python scripts/generalization/broad_seventh.py axes
"""

from __future__ import annotations

import argparse

import numpy as np

from broad_fifth import default_axis, hardness_fit, rb_rotations, regime_pair
from broad_sixth import KINDS, kind_of
from router.featurizer import get_featurizer
from training.broad_data import PERMITTED, STRONG, WEAK, column, fit_ridge, held_out_folds, inner_alpha, task_weights
from training.dataset import Dataset, load_jsonl
from training.embeddings import embed_texts
from training.metrics import two_model_report


def pair_of(ds: Dataset, rows: np.ndarray) -> tuple[int, int] | None:
    """The task's pair in the held-out sets' regime; gpt-4 vs mixtral for AlpacaEval (win rates
    against gpt-4: its gain is 0.5 minus mixtral's)."""
    if column(ds, "source")[rows[0]] == "alpacaeval":
        return ds.labels.index(STRONG), ds.labels.index(WEAK)
    return regime_pair(ds, rows)


def gain_target(ds: Dataset, rows: np.ndarray, centred: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows that have a pair, their gain q(strong) - q(weak)), task by task."""
    tasks = column(ds, "task")[rows]
    keep, ys = [], []
    for t in sorted(set(tasks)):
        r = rows[tasks == t]
        pair = pair_of(ds, r)
        if pair is None:
            continue
        s, w = pair
        r = r[~np.isnan(ds.scores[r, s]) & ~np.isnan(ds.scores[r, w])]
        if len(r) < 30:
            continue
        y = ds.scores[r, s] - ds.scores[r, w]
        keep.append(r)
        ys.append(y - y.mean() if centred else y)
    return np.concatenate(keep), np.concatenate(ys)


def gain_fit(X: np.ndarray, ds: Dataset, rows: np.ndarray, centred: bool):
    r, y = gain_target(ds, rows, centred)
    tasks = column(ds, "task")[r]
    w = task_weights(tasks)
    coef, b = fit_ridge(X[r], y, inner_alpha(X[r], y, tasks, w), w)
    return lambda idx: X[idx] @ coef + b


def top_half_target(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """Per prompt: the mean score of the task's better half of models (by task mean, among models
    labelling 90%+ of it), z-scored within the task: "hard for good models", the difficulty that
    decides a strong pair's gain, where the all-model mean also counts weak models' misses."""
    tasks = column(ds, "task")[rows]
    out = np.zeros(len(rows))
    for t in set(tasks):
        m = tasks == t
        S = ds.scores[rows[m]]
        cols = np.flatnonzero((~np.isnan(S)).mean(axis=0) >= 0.9)
        if len(cols) < 2:
            cols = np.flatnonzero((~np.isnan(S)).any(axis=0))
        means = np.nanmean(S[:, cols], axis=0)
        top = cols[means >= np.median(means)]
        raw = np.nan_to_num(np.nanmean(S[:, top], axis=1), nan=float(np.nanmean(S[:, top])))
        sd = raw.std()
        out[m] = (raw - raw.mean()) / (sd if sd > 1e-9 else 1.0)
    return out


def top_half_fit(X: np.ndarray, ds: Dataset, rows: np.ndarray):
    """Hardness for good models (minus the ridge's prediction of `top_half_target`)."""
    tasks = column(ds, "task")[rows]
    y, w = top_half_target(ds, rows), task_weights(tasks)
    coef, b = fit_ridge(X[rows], y, inner_alpha(X[rows], y, tasks, w), w)
    return lambda idx: -(X[idx] @ coef + b)


def as_pair_matrix(score_fit):
    """A score fit as the [n, models] matrix `rb_rotations` reads: gpt-4's column the score."""
    def fit(X: np.ndarray, ds: Dataset, rows: np.ndarray):
        score = score_fit(X, ds, rows)
        js = ds.labels.index(STRONG)

        def predict(idx):
            P = np.zeros((len(idx), len(ds.labels)))
            P[:, js] = score(idx)
            return P

        return predict

    return fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["regime", "rotations", "axes"])
    ap.add_argument("--data", default=".doka/data/combined_all.jsonl")
    ap.add_argument("--featurizer", default="minilm-l6-v2-static+stats")
    args = ap.parse_args()
    if args.what == "rotations":
        for centred in (False, True):
            rb_rotations(f"gain ({'centred' if centred else 'raw'})",
                         as_pair_matrix(lambda X, ds, rows, c=centred: gain_fit(X, ds, rows, c)))
        return
    if args.what == "axes":
        rb_rotations("default's axis alone", as_pair_matrix(lambda X, ds, rows: default_axis(X, ds, rows[column(ds, "source")[rows] == "routerbench"])))
        rb_rotations("within-task axis alone", as_pair_matrix(lambda X, ds, rows: hardness_fit(X, ds, rows[np.isin(column(ds, "source")[rows], PERMITTED)])))
        rb_rotations("within-task axis, top-half models", as_pair_matrix(
            lambda X, ds, rows: top_half_fit(X, ds, rows[np.isin(column(ds, "source")[rows], PERMITTED)])))
        rb_rotations("within-task axis, statistics only", as_pair_matrix(
            lambda X, ds, rows: hardness_fit(X, ds, rows[np.isin(column(ds, "source")[rows], PERMITTED)], np.arange(X.shape[1] - 8, X.shape[1]))))
        return
    ds = load_jsonl(args.data)
    X = embed_texts(ds.prompts, get_featurizer(args.featurizer), progress=False).astype(np.float64)
    task, source = column(ds, "task"), column(ds, "source")
    permitted = lambda tr: tr[np.isin(source[tr], PERMITTED)]  # noqa: E731
    designs = {"default's axis": lambda tr: default_axis(X, ds, tr[source[tr] == "routerbench"]),
               "within-task axis": lambda tr: hardness_fit(X, ds, permitted(tr)),
               "gain raw": lambda tr: gain_fit(X, ds, permitted(tr), False),
               "gain centred": lambda tr: gain_fit(X, ds, permitted(tr), True),
               "gain raw, all sources": lambda tr: gain_fit(X, ds, tr, False),
               "within-task, top half": lambda tr: top_half_fit(X, ds, permitted(tr))}
    out: list[tuple[str, dict[str, float]]] = []
    for fold in held_out_folds(ds, "task"):
        fits = None
        for t in sorted(set(task[fold.test])):
            rows = fold.test[task[fold.test] == t]
            pair = pair_of(ds, rows)
            if pair is None:
                continue
            fits = fits or {k: d(fold.train) for k, d in designs.items()}
            s, w = pair
            keep = rows[~np.isnan(ds.scores[rows, s]) & ~np.isnan(ds.scores[rows, w])]
            qs, qw = ds.scores[keep, s], ds.scores[keep, w]
            vals = {k: two_model_report(f(keep), qs, qw, bootstrap=0)["router"]["apgr"] for k, f in fits.items()}
            out.append((kind_of(t), vals))
            print(f"{kind_of(t)[:12]:12s} {t[:34]:34s} n={len(keep):5d} {ds.labels[s][:20]} vs {ds.labels[w][:20]}"
                  + "".join(f" | {k}: {v:.3f}" for k, v in vals.items()), flush=True)
    base = "default's axis"
    for kind in (*KINDS, None):
        got = [v for k, v in out if kind is None or k == kind]
        if not got:
            continue
        cells = []
        for name in designs:
            a = np.array([v[name] for v in got])
            d = a - np.array([v[base] for v in got])
            cells.append(f"{name} {np.mean(a):.3f}" + ("" if name == base else
                         f" ({d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0:.3f}, {int((d > 0).sum())}/{len(d)})"))
        print(f"{kind or 'all'} ({len(got)} tasks): " + " | ".join(cells))


if __name__ == "__main__":
    main()
