"""Broad protocol, sixth pass (docs/benchmarks.md): the two axes added, not fitted together.

The fifth pass found two signals that do not meet: the default's raw-ease ridge on RouterBench
(between-task: which kinds of prompt gpt-4 gains on; it is what routes RouterBench's rotations)
and a within-task ridge trained on every permitted source (which prompt is harder inside a task;
it carries to unseen code and math). Fitting them together (`two-axis`, `hybrid`) lost one or the
other. Here the two ridges are fitted apart and their predictions added with a weight fixed in
advance, `lam` = 1: the within-task prediction (in within-task standard deviations) times the
mean within-task standard deviation of RouterBench's raw ease, so one unit of it moves a prompt
as far as one within-task sd of the default's own scale. The sum is one linear map, so it ships as
a `difficulty` state (one dot product, logistic curves per model fitted on RouterBench as the
default's are); other weights are printed as a sensitivity check only, never picked on a fold.

- `ease`: Spearman of each axis with every held-out task's true mean score (32 tasks).
- `regime`: hardness as the router on each task's regime pair (as `broad_fifth.py regime`).
- `pairs`: hardness as the router on *every* pair of a held-out task's models whose means differ
  by at least 0.05 and that label 90% of it, APGR averaged per task: does it find where the
  stronger model gains, whichever pair is asked.
- `rotations`: the shipped form (curves) on RouterBench's held-out rotations and in distribution,
  trained on RouterBench's train split + arenabench + llmrouter.
- `kinds`: the held-out sets are three kinds of task (multiple-choice knowledge, math word
  problems, open chat), so every held-out task's `regime` APGR and `ease` Spearman, grouped by
  kind (`KINDS`, fixed from the task names before scoring), for the two axes and the shipped
  families (today's default; `task_difficulty` and `difficulty` on the permitted sources) where
  their training rows label the pair. AlpacaEval is scored on gpt-4 vs mixtral as the broad
  protocol scores it. Also `task_difficulty` with logistic curves fitted within task (per model,
  or one slope shared by all: 1PL), and every design's APGR averaged over every pair of the task
  (as `pairs`): curves, unlike one axis, could send a strong pair's gain to hard prompts and a
  weak pair's to easy ones.

    python scripts/generalization/broad_sixth.py ease
    python scripts/generalization/broad_sixth.py regime
    python scripts/generalization/broad_sixth.py pairs
    python scripts/generalization/broad_sixth.py rotations
    python scripts/generalization/broad_sixth.py kinds
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from scipy.stats import spearmanr

from broad_fifth import default_axis, ease_score, hardness_fit, held_out_table, rb_rotations, regime_pair, regime_score
from router.families import FAMILIES, get_family
from router.families_irt import _logistic_lines, predict_difficulty
from router.family_base import sigmoid
from router.featurizer import get_featurizer
from training.broad_data import PERMITTED, canonical_task, column, difficulty_target, fit_ridge, held_out_folds, inner_alpha, task_weights
from training.broad_designs import shipped_fit, shipped_labels, shipped_rows
from training.dataset import Dataset, load_jsonl
from training.embeddings import embed_texts
from training.metrics import two_model_report

WEIGHTS = (1.0, 0.5, 2.0)  # 1 is the design; the others are shown as sensitivity only
KINDS = {"knowledge (multiple choice)": ("arc_challenge", "arc_easy", "openbook_qa", "commonsense_qa", "gpqa", "cmmlu", "ceval"),
         "knowledge (open QA)": ("natural_qa", "trivia_qa"),
         "math": ("math", "math_prealgebra"),
         "code": ("mbpp", "human_eval", "humaneval", "javascript"),
         "chat": ("arena-bench-v1", "alpaca_eval"),
         "other": ("winogrande", "commongen", "agentverse-logicgrid")}
SHIPPED = ("shipped_difficulty_routerbench_only", "shipped_task_difficulty_permitted", "shipped_difficulty_permitted")
LINKS = ("logistic", "logistic_shared")  # task_difficulty's other links, on the permitted rows


def kind_of(task: str) -> str:
    name = canonical_task(task)
    for kind, names in KINDS.items():
        if any(name == n or name.startswith(n + ":") for n in names):
            return kind
    raise ValueError(f"no kind for {task} ({name})")


def summed_state(X: np.ndarray, ds: Dataset, rows: np.ndarray, lam: float) -> dict[str, np.ndarray]:
    """A `difficulty` state whose axis is the default's raw-ease ridge (RouterBench rows of
    `rows`) plus `lam` times the within-task ridge (permitted rows of `rows`) on RouterBench's
    within-task scale; each model's logistic curve fitted on the RouterBench rows."""
    source, tasks = column(ds, "source")[rows], column(ds, "task")[rows]
    rb = rows[source == "routerbench"]
    base = get_family("difficulty").fit(X[rb], ds.scores[rb], dict(FAMILIES["difficulty"].defaults), False)
    coef, bias = base["coef"], float(base["bias"][0])
    if lam:
        perm = rows[np.isin(source, PERMITTED)]
        ptasks = column(ds, "task")[perm]
        y, w = difficulty_target(ds, perm), task_weights(ptasks)
        c2, b2 = fit_ridge(X[perm], y, inner_alpha(X[perm], y, ptasks, w), w)
        ease = np.nanmean(ds.scores[rb], axis=1)
        rb_tasks = tasks[source == "routerbench"]
        sd = float(np.mean([ease[rb_tasks == t].std() for t in set(rb_tasks)]))
        coef, bias = coef + lam * sd * c2, bias + lam * sd * b2
    Y = ds.scores[rb]
    shrink = float(FAMILIES["difficulty"].defaults["shrink"])
    return {"coef": coef, "bias": np.array([bias]), **_logistic_lines(X[rb] @ coef + bias, Y, ~np.isnan(Y), shrink)}


def summed_hardness(X: np.ndarray, ds: Dataset, rows: np.ndarray, lam: float):
    state = summed_state(X, ds, rows, lam)
    return lambda idx: -(X[idx] @ state["coef"] + state["bias"][0])


def summed_fit(lam: float):
    def fit(X: np.ndarray, ds: Dataset, rows: np.ndarray):
        state = summed_state(X, ds, rows, lam)
        return lambda idx: predict_difficulty(state, X[idx])

    return fit


def all_pairs(ds: Dataset, rows: np.ndarray, gap: float = 0.05) -> list[tuple[int, int]]:
    labelled = ~np.isnan(ds.scores[rows])
    cols = np.flatnonzero(labelled.mean(axis=0) >= 0.9)
    means = {j: float(np.nanmean(ds.scores[rows, j])) for j in cols}
    return [(s, w) if means[s] > means[w] else (w, s) for s, w in itertools.combinations(cols, 2) if abs(means[s] - means[w]) >= gap]


def pairs_score(ds: Dataset):
    """Each design's hardness averaged over every pair of the task's models (`every_pair`)."""
    source = column(ds, "source")

    def score(t, rows, fits):
        vals = {} if source[rows[0]] == "alpacaeval" else every_pair(None, ds, rows, fits, {})
        return (vals, f"{t[:40]:40s} n={len(rows):5d} pairs={len(all_pairs(ds, rows)):3d}") if vals else None

    return score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["ease", "regime", "pairs", "rotations", "kinds"])
    ap.add_argument("--data", default=".doka/data/combined_all.jsonl")
    ap.add_argument("--featurizer", default="minilm-l6-v2-static+stats")
    args = ap.parse_args()
    if args.what == "rotations":
        for lam in (0.0, *WEIGHTS):
            rb_rotations(f"summed axes, lam {lam}", summed_fit(lam))
        return
    ds = load_jsonl(args.data)
    X = embed_texts(ds.prompts, get_featurizer(args.featurizer), progress=False).astype(np.float64)
    if args.what == "kinds":
        return by_kind(X, ds)
    source = column(ds, "source")
    designs = {"default's axis": lambda tr: default_axis(X, ds, tr[source[tr] == "routerbench"]),
               "within-task, permitted": lambda tr: hardness_fit(X, ds, tr[np.isin(source[tr], PERMITTED)])}
    for lam in WEIGHTS:
        designs[f"summed, lam {lam}"] = lambda tr, lam=lam: summed_hardness(X, ds, tr, lam)
    score = {"ease": ease_score(ds), "regime": regime_score(ds, bootstrap=0), "pairs": pairs_score(ds)}[args.what]
    results = held_out_table(ds, designs, score)
    base_name = "default's axis"
    base = np.array(results[base_name], dtype=float)
    centre = 0.0 if args.what == "ease" else 0.5
    for k, v in results.items():
        a = np.array(v, dtype=float)
        d = a - base
        paired = f", paired vs default's axis {np.nanmean(d):+.3f} ± {np.nanstd(d, ddof=1) / np.sqrt(len(d)):.3f} ({int((d > 0).sum())}/{len(d)})"
        print(f"{k}: {len(a)} tasks, median {np.nanmedian(a):.3f}, mean {np.nanmean(a):.3f}, worst {np.nanmin(a):.3f}, "
              f"above {centre}: {int((a > centre).sum())}{'' if k == base_name else paired}")


def task_difficulty_link(X: np.ndarray, ds: Dataset, rows: np.ndarray, link: str):
    """`task_difficulty` on `rows` with logistic curves in place of its lines: per model
    (`logistic`) or one slope for all (`logistic_shared`); tried here, not shipped."""
    fam = get_family("task_difficulty")
    groups = column(ds, "task")[rows]
    state = fam.fit(X[rows], ds.scores[rows], dict(fam.defaults), False, groups=groups)
    Y = ds.scores[rows]
    h = X[rows] @ state["coef"] + state["bias"][0]
    g = np.unique(groups, return_inverse=True)[1]
    state.update(_within_task_logistic(h, Y, ~np.isnan(Y), g, fam.defaults["shrink"], shared=link == "logistic_shared"))
    return lambda Z: predict_difficulty(state, Z)


def _within_task_logistic(h: np.ndarray, Y: np.ndarray, mask: np.ndarray, g: np.ndarray, shrink: float,
                          shared: bool, rounds: int = 40) -> dict[str, np.ndarray]:
    """Each model's quality as sigmoid(a_(model, task) + b * h), one intercept per task the model
    is labelled on and a slope b fitted on within-task variation only (conditional logistic
    regression), so a task where a model is simply better overall never reads as a slope. An
    unseen task gets each model's mean intercept over its tasks. `shared`: one b for every model
    (1PL: models differ in ability, prompts in difficulty). Then a strong pair's score rises with
    a prompt's difficulty and a weak pair's falls, as a strong pair gains where the weak model
    fails and a weak pair where the strong one still succeeds; per-model slopes, fitted one by
    one, can come out in either order by noise (docs/benchmarks.md, broad sixth pass)."""
    tasks = np.unique(g)
    G = (g[:, None] == tasks[None, :]).astype(np.float64)  # [n, T]
    M = mask.astype(np.float64)
    T = np.where(mask, Y, 0.0)
    present = (G.T @ M) > 0  # [T, models]
    a = np.zeros((len(tasks), Y.shape[1]))
    b = np.zeros(Y.shape[1])
    lam_a = 1e-2  # keeps a finite for a model always (or never) right on a task
    lam_b = shrink * float(np.var(h)) * 0.25 + 1e-9
    for _ in range(rounds):
        q = sigmoid(G @ a + h[:, None] * b[None, :])
        r, v = M * (q - T), M * q * (1 - q)
        a = np.where(present, a - (G.T @ r + lam_a * a) / (G.T @ v + lam_a), 0.0)
        q = sigmoid(G @ a + h[:, None] * b[None, :])
        r, v = M * (q - T), M * q * (1 - q)
        grad, hess = (r * h[:, None]).sum(axis=0), (v * h[:, None] ** 2).sum(axis=0)
        if shared:
            b = np.full_like(b, b[0] - (grad.sum() + lam_b * b[0]) / (hess.sum() + lam_b))
        else:
            b = b - (grad + lam_b * b) / (hess + lam_b)
    counts = present.sum(axis=0)
    intercept = np.where(counts > 0, (a * present).sum(axis=0) / np.maximum(counts, 1), 0.0)
    return {"logit_intercept": intercept, "logit_slope": b}


def by_kind(X: np.ndarray, ds: Dataset) -> None:
    task, source = column(ds, "task"), column(ds, "source")
    ease = np.nanmean(ds.scores, axis=1)
    axes = {"default's axis": lambda tr: default_axis(X, ds, tr[source[tr] == "routerbench"]),
            "within-task axis, permitted": lambda tr: hardness_fit(X, ds, tr[np.isin(source[tr], PERMITTED)])}
    rows_out: list[tuple[str, str, dict[str, float], dict[str, float]]] = []
    for fold in held_out_folds(ds, "task"):
        fits = {k: f(fold.train) for k, f in axes.items()}
        shipped = {}
        for d in SHIPPED:
            shipped[d] = (shipped_fit(d, X, ds, fold.train), shipped_labels(d, ds, fold.train))
        tr = shipped_rows("shipped_task_difficulty_permitted", ds, fold.train)
        for link in LINKS:
            shipped[f"task_difficulty {link}"] = (task_difficulty_link(X, ds, tr, link), shipped[SHIPPED[1]][1])
        for t in sorted(set(task[fold.test])):
            rows = fold.test[task[fold.test] == t]
            spear = {k: spearmanr(-f(rows), ease[rows]).correlation for k, f in fits.items()}
            pair = regime_pair(ds, rows)
            apgr: dict[str, float] = {}
            if pair is not None:
                s_, w_ = pair
                keep = rows[~np.isnan(ds.scores[rows, s_]) & ~np.isnan(ds.scores[rows, w_])]
                qs, qw = ds.scores[keep, s_], ds.scores[keep, w_]
                for k, f in fits.items():
                    apgr[k] = two_model_report(f(keep), qs, qw, bootstrap=0)["router"]["apgr"]
                for d, (predict, labelled) in shipped.items():
                    if predict is not None and labelled[s_] and labelled[w_]:
                        P = predict(X[keep])
                        apgr[d] = two_model_report(P[:, s_] - P[:, w_], qs, qw, bootstrap=0)["router"]["apgr"]
            allp = {} if source[rows[0]] == "alpacaeval" else every_pair(X, ds, rows, fits, shipped)
            rows_out.append((kind_of(t), t, spear, apgr, allp))
            line = f"{kind_of(t)[:12]:12s} {t[:36]:36s} n={len(rows):5d} " + " | ".join(f"{k}: rho {v:+.3f}" for k, v in spear.items())
            line += "".join(f" | {k}: {v:.3f}" for k, v in apgr.items())
            line += " || every pair:" + "".join(f" | {k}: {v:.3f}" for k, v in allp.items())
            print(line, flush=True)
    names = [*axes, *SHIPPED, *(f"task_difficulty {link}" for link in LINKS)]
    print("\nby kind: mean over its tasks (tasks scored); APGR on the regime pair, rho = Spearman with true ease")
    for kind in KINDS:
        got = [r for r in rows_out if r[0] == kind]
        cells = []
        for k in axes:
            cells.append(f"{k}: rho {np.mean([r[2][k] for r in got]):+.3f}")
        for k in names:
            v = [r[3][k] for r in got if k in r[3]]
            if v:
                cells.append(f"{k}: {np.mean(v):.3f} ({len(v)})")
        for k in names:
            v = [r[4][k] for r in got if k in r[4]]
            if v:
                cells.append(f"every pair, {k}: {np.mean(v):.3f} ({len(v)})")
        print(f"{kind}: {len(got)} tasks | " + " | ".join(cells))
    base = "shipped_task_difficulty_permitted"
    for k in names:
        both = [(r[4][k], r[4][base]) for r in rows_out if k in r[4] and base in r[4]]
        if both and k != base:
            d = np.array([x - y for x, y in both])
            print(f"every pair, {k} vs {base}: {d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} ({int((d > 0).sum())}/{len(d)} tasks)")


def every_pair(X: np.ndarray, ds: Dataset, rows: np.ndarray, fits: dict, shipped: dict) -> dict[str, float]:
    """APGR averaged over every pair of the task's models 0.05 apart (`all_pairs`) that a design
    can score: an axis gives every pair one direction, per-model curves can tell pairs apart."""
    hard = {k: f(rows) for k, f in fits.items()}
    preds = {d: (predict(X[rows]), labelled) for d, (predict, labelled) in shipped.items() if predict is not None}
    sums: dict[str, list[float]] = {}
    for s_, w_ in all_pairs(ds, rows):
        keep = ~np.isnan(ds.scores[rows, s_]) & ~np.isnan(ds.scores[rows, w_])
        qs, qw = ds.scores[rows[keep], s_], ds.scores[rows[keep], w_]
        scores = {k: h[keep] for k, h in hard.items()}
        scores.update({d: P[keep, s_] - P[keep, w_] for d, (P, labelled) in preds.items() if labelled[s_] and labelled[w_]})
        for k, sc in scores.items():
            sums.setdefault(k, []).append(two_model_report(sc, qs, qw, bootstrap=0)["router"]["apgr"])
    return {k: float(np.mean(v)) for k, v in sums.items()}


if __name__ == "__main__":
    main()
