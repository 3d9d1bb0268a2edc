"""Broad protocol, fifth pass (docs/benchmarks.md): is the held-out sets' regime the missing piece?

gpt-4 vs mixtral on the held-out benchmarks (math word problems, multiple-choice knowledge, open
chat) is a *strong* pair: both answer most prompts, so a prompt that is harder within its task
should be where gpt-4 gains. Leave-one-task-out broad folds so far scored a task's strongest vs
weakest model, which on hard tasks (gpqa, MATH) are both failing, where harder means *less* gain.

- `ease`: does within-task difficulty carry at all? A ridge on each prompt's mean score,
  standardised within its task, trained on the other tasks; Spearman of its prediction with the
  held-out task's true mean score, per task.
- `regime`: the same predicted hardness as a router, scored per held-out task on a pair in the
  held-out sets' regime, fixed from the task's labels before any router is scored: gpt-4 vs
  mixtral where labelled, else the best model (mean >= 0.6) against the model whose mean is
  nearest 0.8x of it (mixtral / gpt-4 is about 0.76-0.81 on those benchmarks). AlpacaEval is left
  out (its labels are win rates against gpt-4, not accuracies).
- `rotations`: what shipping it would cost on RouterBench's own protocol: `--family` trained on
  RouterBench's train split plus `--extra` sources, without the held-out task (every source's copy
  of it), scored gpt-4 vs mixtral on that task's test split; and in distribution.
- `two-axis`: both axes at once, q_j = sigmoid(a_j + b_j * default axis + c_j * within-task
  axis), each model's weights fitted on axes cross-fitted by task (so they say how much each axis
  carries to a task it was not trained on), the axes refitted on everything to predict; the same
  rotations as `rotations` (RouterBench train + arenabench + llmrouter).
- `hybrid --weight W`: `difficulty` on a mixed target, RouterBench rows their raw mean score,
  the other sources' rows only their within-task difficulty; the same rotations.

Alpha: grouped inner cross-validation on the training fold only (`training.broad_data.inner_alpha`).

    python scripts/generalization/broad_fifth.py ease --data .doka/data/combined_all.jsonl
    python scripts/generalization/broad_fifth.py regime --data .doka/data/combined_all.jsonl
    python scripts/generalization/broad_fifth.py rotations --family task_difficulty --extra arenabench llmrouter
    python scripts/generalization/broad_fifth.py two-axis
    python scripts/generalization/broad_fifth.py hybrid --weight 0.3
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

from router.families import FAMILIES, get_family
from router.families_irt import _logistic_lines, predict_difficulty
from router.featurizer import ROUTING_FEATURIZER_ID, get_featurizer
from training.broad_data import (PERMITTED, STRONG, WEAK, canonical_task, column, difficulty_target, fit_ridge, held_out_folds,
                                 inner_alpha, task_weights)
from training.broad_designs import DESIGNS, shipped_fit
from training.dataset import Dataset, from_records, load_jsonl
from training.embeddings import embed_texts
from training.metrics import two_model_report
from training.sources import SOURCES, read_source


def hardness_fit(X: np.ndarray, ds: Dataset, rows: np.ndarray, cols: np.ndarray | None = None):
    """Predicted within-task hardness (minus the standardised ease), fitted on `rows`."""
    Xr = X[rows] if cols is None else X[rows][:, cols]
    tasks = column(ds, "task")[rows]
    y, w = difficulty_target(ds, rows), task_weights(tasks)
    coef, b = fit_ridge(Xr, y, inner_alpha(Xr, y, tasks, w), w)
    return lambda idx: -((X[idx] if cols is None else X[idx][:, cols]) @ coef + b)


def default_axis(X: np.ndarray, ds: Dataset, rows: np.ndarray):
    """The shipped default's difficulty axis (the `difficulty` family's ridge on raw mean score,
    RouterBench rows of the fold only): its gpt-4 vs mixtral score is monotone in it."""
    state = get_family("difficulty").fit(X[rows], ds.scores[rows], dict(FAMILIES["difficulty"].defaults), False)
    return lambda idx: -(X[idx] @ state["coef"] + state["bias"][0])


def hybrid_hardness(X: np.ndarray, ds: Dataset, rows: np.ndarray, weight: float):
    coef, b = hybrid_axis(X, ds, rows, weight)
    return lambda idx: -(X[idx] @ coef + b)


def regime_pair(ds: Dataset, rows: np.ndarray) -> tuple[int, int] | None:
    labelled = ~np.isnan(ds.scores[rows])
    means = {j: float(np.nanmean(ds.scores[rows, j])) for j in np.flatnonzero(labelled.mean(axis=0) >= 0.9)}
    if STRONG in ds.labels and ds.labels.index(STRONG) in means and ds.labels.index(WEAK) in means:
        return ds.labels.index(STRONG), ds.labels.index(WEAK)
    s = max(means, key=means.get)
    weaker = {j: v for j, v in means.items() if v < means[s]}
    if means[s] < 0.6 or not weaker:
        return None
    return s, min(weaker, key=lambda j: abs(weaker[j] - 0.8 * means[s]))


def shipped_family_fit(family: str):
    """A family as `doka router train` fits it (`training.broad_designs.shipped_fit`)."""
    design = f"shipped_{family}"
    if design not in DESIGNS:
        raise SystemExit(f"--family: one of {sorted(d[len('shipped_'):] for d in DESIGNS if d.startswith('shipped_'))}")

    def fit(X: np.ndarray, ds: Dataset, rows: np.ndarray):
        predict = shipped_fit(design, X, ds, rows)
        return lambda idx: predict(X[idx])

    return fit


def _two_axes(X: np.ndarray, ds: Dataset, rows: np.ndarray):
    """The default's raw-ease axis (RouterBench rows, alpha 100) and the within-task axis (all rows)."""
    rb = rows[column(ds, "source")[rows] == "routerbench"]
    c1, b1 = fit_ridge(X[rb], np.nanmean(ds.scores[rb], axis=1), 100.0)
    c2, b2 = fit_ridge(X[rows], difficulty_target(ds, rows), 10.0, task_weights(column(ds, "task")[rows]))
    return lambda idx: np.stack([X[idx] @ c1 + b1, X[idx] @ c2 + b2], axis=1)


def _logistic_weights(H: np.ndarray, y: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """[a, b, c] of sigmoid(a + H @ [b, c]) on fractional labels (Newton; L2 on b and c)."""
    A = np.hstack([np.ones((len(y), 1)), H])
    reg = lam * np.array([1e-3, 1.0, 1.0])
    w = np.zeros(3)
    for _ in range(30):
        q = 1 / (1 + np.exp(-(A @ w)))
        step = np.linalg.solve((A * (q * (1 - q))[:, None]).T @ A + np.diag(reg), A.T @ (q - y) + reg * w)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def two_axis_fit(X: np.ndarray, ds: Dataset, rows: np.ndarray):
    groups = np.array([canonical_task(t) for t in column(ds, "task")[rows]])
    H = np.zeros((len(rows), 2))
    for g in set(groups):  # out-of-fold axes for the per-model weights
        te = groups == g
        H[te] = _two_axes(X, ds, rows[~te])(rows[te])
    mu, sd = H.mean(axis=0), H.std(axis=0)
    Hs = (H - mu) / sd
    weights = []
    for j in range(ds.scores.shape[1]):
        known = ~np.isnan(ds.scores[rows, j])
        weights.append(_logistic_weights(Hs[known], ds.scores[rows, j][known]) if known.sum() >= 20 else np.zeros(3))
    Wt = np.array(weights)
    full = _two_axes(X, ds, rows)
    return lambda idx: 1 / (1 + np.exp(-(Wt[:, 0][None] + ((full(idx) - mu) / sd) @ Wt[:, 1:].T)))


def hybrid_axis(X: np.ndarray, ds: Dataset, rows: np.ndarray, weight: float) -> tuple[np.ndarray, float]:
    src, tasks = column(ds, "source")[rows], column(ds, "task")[rows]
    ease = np.nanmean(ds.scores[rows], axis=1)
    rb = src == "routerbench"
    sd = float(np.mean([ease[rb & (tasks == t)].std() for t in set(tasks[rb])]))
    y = np.where(rb, ease, ease[rb].mean() + sd * difficulty_target(ds, rows))
    return fit_ridge(X[rows], y, 100.0, np.where(rb, 1.0, weight))


def hybrid_fit(X: np.ndarray, ds: Dataset, rows: np.ndarray, weight: float = 0.3):
    """`difficulty` on a mixed target: RouterBench rows keep their raw mean score (the between-task
    signal in distribution), other sources' rows add only within-task difficulty (their per-task
    z-score on RouterBench's scale, weighted `weight`); per-model logistic curves as `difficulty`."""
    coef, b = hybrid_axis(X, ds, rows, weight)
    Y = ds.scores[rows]
    state = {"coef": coef, "bias": np.array([b]), **_logistic_lines(X[rows] @ coef + b, Y, ~np.isnan(Y), 20.0)}
    return lambda idx: predict_difficulty(state, X[idx])


def rb_rotations(label: str, fit, extra: tuple[str, ...] = ("arenabench", "llmrouter")) -> None:
    """RouterBench's rotations: `fit` on RouterBench's train split plus the `extra` sources without
    the held-out task (every source's copy, and any prompt equal to a test prompt), scored gpt-4 vs
    mixtral on the held-out task's test split; then in distribution."""
    ds = from_records([r for k in ("routerbench", *extra) for r in read_source(SOURCES[k])])
    X = embed_texts(ds.prompts, get_featurizer(ROUTING_FEATURIZER_ID), progress=False).astype(np.float64)
    split, task = column(ds, "split"), column(ds, "task")
    js, jw = ds.labels.index(STRONG), ds.labels.index(WEAK)
    prompts = np.array(ds.prompts, dtype=object)
    cells = []
    for name in ("arc-challenge", "mbpp", "winogrande", None):
        te = np.flatnonzero((split == "test") & ((task == f"routerbench:{name}") if name else True))
        held = set(prompts[te])
        keep = (split != "test") & np.array([p not in held for p in prompts])
        if name:
            keep &= np.array([canonical_task(t) != canonical_task(f"routerbench:{name}") for t in task])
        P = fit(X, ds, np.flatnonzero(keep))(te)
        r = two_model_report(P[:, js] - P[:, jw], ds.scores[te, js], ds.scores[te, jw], bootstrap=200)["router"]
        cells.append(f"{name or 'in distribution'} {r['apgr']:.3f} ± {r['apgr_se']:.3f}")
    print(f"{label} on RouterBench train + {', '.join(extra) or 'nothing'}: " + " | ".join(cells))


def held_out_table(ds: Dataset, designs: dict, score) -> dict[str, list[float]]:
    """Leave-one-task-out: each design fitted on a fold's training rows, then `score(task, rows,
    fits)` on each held-out task -> ({design: value}, line) or None to skip it; prints a line per
    task and returns each design's values."""
    task = column(ds, "task")
    results: dict[str, list[float]] = {k: [] for k in designs}
    for fold in held_out_folds(ds, "task"):
        fits = {k: d(fold.train) for k, d in designs.items()}
        for t in sorted(set(task[fold.test])):
            got = score(t, fold.test[task[fold.test] == t], fits)
            if got is None:
                continue
            vals, line = got
            for k, v in vals.items():
                results[k].append(v)
                line += f" | {k}: {v:+.3f}"
            print(line, flush=True)
    return results


def ease_score(ds: Dataset):
    """Spearman of each design's predicted ease with the task's true mean score."""
    ease = np.nanmean(ds.scores, axis=1)
    return lambda t, rows, fits: ({k: spearmanr(-f(rows), ease[rows]).correlation for k, f in fits.items()},
                                  f"{t[:40]:40s} n={len(rows):5d}")


def regime_score(ds: Dataset, bootstrap: int = 200):
    """APGR of each design's hardness on the task's regime pair (`regime_pair`); AlpacaEval skipped."""
    source = column(ds, "source")

    def score(t, rows, fits):
        pair = None if source[rows[0]] == "alpacaeval" else regime_pair(ds, rows)
        if pair is None:
            return None
        s, w = pair
        keep = rows[~np.isnan(ds.scores[rows, s]) & ~np.isnan(ds.scores[rows, w])]
        qs, qw = ds.scores[keep, s], ds.scores[keep, w]
        reps = {k: two_model_report(f(keep), qs, qw, bootstrap=bootstrap)["router"] for k, f in fits.items()}
        line = f"{t[:34]:34s} n={len(keep):5d} {ds.labels[s][:22]}={qs.mean():.2f} vs {ds.labels[w][:22]}={qw.mean():.2f}"
        if bootstrap:
            line += f" (se {max(r['apgr_se'] for r in reps.values()):.3f})"
        return {k: r["apgr"] for k, r in reps.items()}, line

    return score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["ease", "regime", "rotations", "two-axis", "hybrid"])
    ap.add_argument("--weight", type=float, default=0.3, help="hybrid: weight of the other sources' rows")
    ap.add_argument("--data", default=".doka/data/combined_all.jsonl")
    ap.add_argument("--featurizer", default="minilm-l6-v2-static+stats")
    ap.add_argument("--family", default="task_difficulty")
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args()
    if args.what == "rotations":
        return rb_rotations(args.family, shipped_family_fit(args.family), tuple(args.extra))
    if args.what == "two-axis":
        return rb_rotations("two-axis", two_axis_fit)
    if args.what == "hybrid":
        return rb_rotations(f"hybrid (weight {args.weight})", lambda X, ds, rows: hybrid_fit(X, ds, rows, args.weight))
    ds = load_jsonl(args.data)
    X = embed_texts(ds.prompts, get_featurizer(args.featurizer), progress=False).astype(np.float64)
    source = column(ds, "source")
    stats = np.arange(X.shape[1] - 8, X.shape[1]) if args.featurizer.endswith("+stats") else None
    designs = {"all sources": lambda tr: hardness_fit(X, ds, tr),
               "permitted": lambda tr: hardness_fit(X, ds, tr[np.isin(source[tr], PERMITTED)])}
    if stats is not None:
        designs["statistics only"] = lambda tr: hardness_fit(X, ds, tr, stats)
    designs["default's axis"] = lambda tr: default_axis(X, ds, tr[source[tr] == "routerbench"])
    designs["hybrid axis"] = lambda tr: hybrid_hardness(X, ds, tr[np.isin(source[tr], PERMITTED)], args.weight)
    results = held_out_table(ds, designs, ease_score(ds) if args.what == "ease" else regime_score(ds))
    for k, v in results.items():
        a = np.array(v, dtype=float)
        centre = 0.0 if args.what == "ease" else 0.5
        print(f"{k}: {len(a)} tasks, median {np.nanmedian(a):.3f}, mean {np.nanmean(a):.3f}, worst {np.nanmin(a):.3f}, "
              f"above {centre}: {int((a > centre).sum())}")


if __name__ == "__main__":
    main()
