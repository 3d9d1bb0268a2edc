"""`doka router eval`: one command for any dataset in the JSONL format."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from router.runtime import LearnedRouter
from training.dataset import Dataset, DatasetError, config_prices, fill_costs, load_jsonl
from training.embeddings import embed_texts
from training.metrics import multi_model_report, two_model_report


def predict_dataset(router: LearnedRouter, ds: Dataset, progress: bool = True) -> np.ndarray:
    """Router predictions [n, len(router.labels)], embedding through the cache."""
    X = embed_texts(ds.prompts, router.featurizer, progress=progress)
    return router.predict_embeddings(X)


def parse_alias_flags(items: list[str] | None) -> dict[str, str]:
    """`--alias DATASET_NAME=ARTIFACT_NAME` flags -> {dataset name: artifact name}."""
    out: dict[str, str] = {}
    for item in items or []:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise DatasetError(f"--alias expects DATASET_MODEL=ARTIFACT_MODEL, got {item!r}")
        out[src] = dst
    return out


def apply_aliases(ds: Dataset, aliases: dict[str, str] | None) -> Dataset:
    """The dataset with its model names renamed (a dataset that spells a model differently), in
    its scores and costs and in recorded `responses`."""
    if not aliases:
        return ds
    labels = [aliases.get(lab, lab) for lab in ds.labels]
    if len(set(labels)) != len(labels):
        raise DatasetError(f"--alias maps two dataset models onto one name: {labels}")
    extra = [{**e, "responses": {aliases.get(m, m): t for m, t in e["responses"].items()}}
             if isinstance(e.get("responses"), dict) else e for e in ds.extra]
    return Dataset(ds.ids, ds.prompts, labels, ds.scores, ds.costs, ds.source_hash, extra)


def router_columns(router: LearnedRouter, *names: str) -> list[int]:
    """The artifact's output column of each model, or a clear error naming what it predicts."""
    for name in names:
        if name not in router.labels:
            raise DatasetError(f"the artifact does not predict {name!r}; it predicts {router.labels}")
    return [router.labels.index(name) for name in names]


def only_task(ds: Dataset, task: str | None) -> Dataset:
    """The records whose `task` is `task` (all of them for None): one benchmark of a mixed file."""
    if task is None:
        return ds
    tasks = [str((e or {}).get("task", "")) for e in ds.extra] if ds.extra else [""] * len(ds)
    keep = np.array([t == task for t in tasks])
    if not keep.any():
        raise DatasetError(f"no record has task {task!r}; the data has tasks {sorted(set(tasks) - {''}) or 'none'}")
    return ds.subset(keep)


def constant_scores(scores: np.ndarray, share: float = 0.9) -> str | None:
    """Why a router's scores on a dataset are (nearly) constant, or None. Nearly constant: one
    value (to 6 significant digits) holds `share` of the prompts, or the spread is below float
    noise; such a router cannot rank prompts, and its APGR (about 0.5) says nothing."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2:
        reasons = [constant_scores(s[:, j], share) for j in range(s.shape[1])]
        return None if any(r is None for r in reasons) else "every model's " + reasons[0]
    if len(s) < 2:
        return None
    scale = max(float(np.abs(s).max()), 1e-12)
    if float(s.std()) <= 1e-9 * scale:
        return f"scores are constant on all {len(s)} prompts (std {s.std():.2e})"
    _, counts = np.unique(np.round(s / scale, 6), return_counts=True)
    top = counts.max() / len(s)
    if top >= share:
        return f"scores are nearly constant: one value on {top:.0%} of {len(s)} prompts"
    return None


def _warn_constant(out: dict[str, Any], scores: np.ndarray) -> None:
    why = constant_scores(scores)
    out["constant_scores"] = why
    if why:
        print(f"warning: {why}; the router cannot tell these prompts apart, so its APGR/AIQ here is "
              "what any fixed choice gets", file=sys.stderr)


def evaluate(
    router: LearnedRouter,
    data: str | Path | Dataset,
    *,
    aliases: dict[str, str] | None = None,
    strong: str | None = None,
    weak: str | None = None,
    num_thresholds: int = 10,
    per_call_costs: dict[str, float] | None = None,
    config_path: str | None = None,
    assumed_output_tokens: int = 256,
    progress: bool = True,
    bootstrap: int = 200,
    task: str | None = None,
) -> dict[str, Any]:
    ds = only_task(apply_aliases(load_jsonl(data) if not isinstance(data, Dataset) else data, aliases), task)
    if (strong is None) != (weak is None):
        raise DatasetError("two-model mode needs both --strong and --weak")
    unknown = [lab for lab in ds.labels if lab not in router.labels]
    out: dict[str, Any] = {"artifact": router.version, "family": router.metadata["family"], "data_sha256": ds.source_hash,
                           "unknown_models": unknown}
    if unknown:
        print(f"note: the artifact does not know the dataset model(s) {unknown}; they are ignored "
              f"(map a differently spelled one with --alias DATASET_MODEL=ARTIFACT_MODEL; the artifact knows {router.labels})",
              file=sys.stderr)

    if strong is not None:
        ps, pw = router_columns(router, strong, weak)
        for name in (strong, weak):
            if name not in ds.labels:
                like = [lab for lab in ds.labels if name.lower() in lab.lower() or lab.lower() in name.lower()]
                hint = f"; spelled differently? --alias {like[0]}={name}" if like else ""
                raise DatasetError(f"model {name!r} is not in the dataset; it has {ds.labels}{hint}")
        js, jw = ds.label_index(strong), ds.label_index(weak)  # type: ignore[arg-type]
        keep = ~np.isnan(ds.scores[:, js]) & ~np.isnan(ds.scores[:, jw])
        if keep.sum() < 2:
            raise DatasetError(f"fewer than 2 prompts have scores for both {strong!r} and {weak!r}")
        sub = ds.subset(keep)
        P = predict_dataset(router, sub, progress)
        rep = two_model_report(P[:, ps] - P[:, pw], sub.scores[:, js], sub.scores[:, jw], num_thresholds, bootstrap)
        _warn_constant(out, P[:, ps] - P[:, pw])
        out.update(mode="two-model", strong=strong, weak=weak, dropped=int((~keep).sum()), **rep)
        return out

    labels = [lab for lab in router.labels if lab in ds.labels]
    if len(labels) < 2:
        raise DatasetError(f"the dataset and the artifact share fewer than 2 models (artifact {router.labels}, data {ds.labels})")
    cols = [ds.label_index(lab) for lab in labels]
    work = Dataset(ds.ids, ds.prompts, ds.labels, ds.scores, ds.costs.copy(), ds.source_hash)
    try:
        prices = config_prices(config_path)
    except Exception:  # noqa: BLE001
        prices = {}
    missing = fill_costs(work, per_call=per_call_costs, per_token=prices, assumed_output_tokens=assumed_output_tokens)
    missing = [m for m in missing if m in labels]
    if missing:
        raise DatasetError(
            f"no cost known for {missing}: add `costs` to the data, pass --cost MODEL=USD_PER_CALL, "
            "or give those models prices (route_label) in the doka config"
        )
    S = work.scores[:, cols]
    keep = ~np.isnan(S).any(axis=1)
    if keep.sum() < 2:
        raise DatasetError("fewer than 2 prompts have scores for every shared model")
    sub = work.subset(keep)
    P = predict_dataset(router, sub, progress)[:, [router.labels.index(lab) for lab in labels]]
    belief = router.label_costs(labels)
    _warn_constant(out, P)
    rep = multi_model_report(P, sub.scores[:, cols], sub.costs[:, cols], labels, belief)
    out.update(mode="multi-model", dropped=int((~keep).sum()), **rep)
    return out


def apgr_summary(report: dict[str, Any]) -> str:
    """One line for people: the router's APGR with its sampling spread next to a random router's,
    so a gain smaller than the noise of the dataset is not read as one."""
    r, rnd = report["router"], report["random"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    line = f"APGR {fmt(r['apgr'])} on {report['n']} prompts"
    if r.get("apgr_ci95"):
        lo, hi = r["apgr_ci95"]
        line += f" (bootstrap SE {fmt(r['apgr_se'])}, 95% interval {lo:.3f}-{hi:.3f} over {r['resamples']} resamples)"
    line += f"; a random router {fmt(rnd['apgr'])}"
    if rnd.get("apgr_std") is not None:
        line += f" +- {rnd['apgr_std']:.3f} over {rnd['seeds']} seeds"
    return line


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Draw the curve of an eval report: strong-call % vs quality, or cost vs quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if report["mode"] == "two-model":
        curve = report["router"]["curve"]
        ax.plot([p["strong_pct"] for p in curve], [p["quality"] for p in curve], marker=".", label=f"{report['family']} router")
        ax.plot([0, 100], [report["weak_quality"], report["strong_quality"]], linestyle=":", color="grey", label="random (expected)")
        ax.axhline(report["weak_quality"], color="grey", linestyle="--", label=report["weak"])
        ax.axhline(report["strong_quality"], color="red", linestyle="--", label=report["strong"])
        ax.set_xlabel(f"calls to {report['strong']} (%)")
        ax.set_title(f"APGR {report['router']['apgr'] or float('nan'):.3f}  (random {report['random']['apgr'] or float('nan'):.3f})")
    else:
        curve = sorted(report["router"]["curve"], key=lambda p: p["cost"])
        ax.plot([p["cost"] for p in curve], [p["quality"] for p in curve], marker=".", label=f"{report['family']} router (AIQ {report['router']['aiq']:.3f})")
        for name, pt in report["single_models"].items():
            ax.scatter(pt["cost"], pt["quality"], s=18)
            ax.annotate(name, (pt["cost"], pt["quality"]), fontsize=6)
        ax.scatter(report["oracle"]["cost"], report["oracle"]["quality"], marker="*", s=80, color="gold", label="oracle")
        ax.scatter(report["random"]["cost"], report["random"]["quality"], marker="x", color="grey", label="random")
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per prompt (USD)")
        ax.set_title(f"quality vs cost over the cost weight (n={report['n']})")
    ax.set_ylabel("mean quality")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
