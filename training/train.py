"""Training a router family on a dataset and writing a signed artifact."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from router.artifact import save_artifact
from router.families import get_family, resolve_params
from router.featurizer import ROUTING_FEATURIZER_ID, get_featurizer
from training.dataset import Dataset, config_prices, fill_costs, load_jsonl, split
from training.embeddings import embed_texts
from training.metrics import multi_model_report


def label_costs(ds: Dataset, config_path: str | None = None, per_call: dict[str, float] | None = None) -> dict[str, float | None]:
    """Mean USD per call per label, gaps filled from flags / config prices."""
    filled = Dataset(ds.ids, ds.prompts, ds.labels, ds.scores, ds.costs.copy(), ds.source_hash)
    try:
        prices = config_prices(config_path)
    except Exception:  # noqa: BLE001 - costs are advisory; a broken config must not stop training
        prices = {}
    fill_costs(filled, per_call=per_call, per_token=prices)
    with warnings.catch_warnings():  # a model no source prices (llmrouter's, routerdc's) is a NaN column: None below
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(filled.costs, axis=0) if len(filled) else []
    return {lab: (None if np.isnan(v) else float(v)) for lab, v in zip(ds.labels, means)}


def task_groups(ds: Dataset) -> np.ndarray | None:
    """Each record's `task` (None when the dataset has none): what a grouped family standardises by."""
    if not ds.extra or not any("task" in e for e in ds.extra):
        return None
    return np.array([str(e.get("task", "")) for e in ds.extra])


def fit_state(family_name: str, X: np.ndarray, Y: np.ndarray, params: dict[str, Any], progress: bool = True,
              groups: np.ndarray | None = None) -> dict[str, Any]:
    family = get_family(family_name)
    state = family.fit(X, Y, params, progress, groups=groups) if family.grouped else family.fit(X, Y, params, progress)
    return {"family": family_name, **state}


def train(
    data: str | Path | Dataset,
    family: str,
    out: str | Path,
    *,
    featurizer_id: str = ROUTING_FEATURIZER_ID,
    params: dict[str, Any] | None = None,
    holdout: float = 0.2,
    use_ray: bool = False,
    signing_key: bytes | str | None = None,
    config_path: str | None = None,
    per_call_costs: dict[str, float] | None = None,
    progress: bool = True,
    seed: int = 0,
) -> Path:
    """Embed (cached), fit, measure on a holdout (then refit on everything), save and sign."""
    started = time.time()
    ds = load_jsonl(data) if not isinstance(data, Dataset) else data
    fam = get_family(family)
    hp = resolve_params(fam, params)
    featurizer = get_featurizer(featurizer_id)
    X = embed_texts(ds.prompts, featurizer, use_ray=use_ray, progress=progress)
    Y = ds.scores
    costs = label_costs(ds, config_path, per_call_costs)
    groups = task_groups(ds)

    metrics: dict[str, Any] = {}
    if holdout > 0 and len(ds) >= 20:
        order = np.random.default_rng(seed).permutation(len(ds))
        cut = int(round(len(ds) * (1 - holdout)))
        tr, te = np.sort(order[:cut]), np.sort(order[cut:])
        st = fit_state(family, X[tr], Y[tr], hp, progress, None if groups is None else groups[tr])
        P = fam.predict(st, X[te])
        S = Y[te]
        known = ~np.isnan(S)
        metrics["holdout"] = {"fraction": holdout, "n": int(len(te)), "mse": float(np.mean((P[known] - S[known]) ** 2))}
        complete = known.all(axis=1)
        C = ds.costs[te]
        belief = np.array([np.nan if costs[lab] is None else costs[lab] for lab in ds.labels])
        C = np.where(np.isnan(C), belief, C)
        if complete.sum() >= 5 and not np.isnan(C[complete]).any():
            rep = multi_model_report(P[complete], S[complete], C[complete], ds.labels, belief)
            metrics["holdout"].update(
                aiq=rep["router"]["aiq"], oracle_aiq=rep["oracle"]["aiq"], zero_router_aiq=rep["zero_router_aiq"]
            )
    state = fit_state(family, X, Y, hp, progress, groups)

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    digest = hashlib.sha256(
        json.dumps([ds.source_hash, family, hp, featurizer.id, created], sort_keys=True, default=str).encode()
    ).hexdigest()[:8]
    version = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{family}-{digest}"
    metadata = {
        "version": version,
        "family": family,
        "labels": ds.labels,
        "featurizer": {"id": featurizer.id, "dim": featurizer.dim, "fingerprint": featurizer.fingerprint},
        "training_data": {
            "sha256": ds.source_hash,
            "records": len(ds),
            "source": str(data) if not isinstance(data, Dataset) else None,
        },
        "hyperparameters": hp,
        "metrics": metrics,
        "costs": costs,
        "created": created,
        "train_seconds": round(time.time() - started, 2),
        "ray": use_ray,
    }
    return save_artifact(Path(out), state, metadata, signing_key)


__all__ = ["train", "fit_state", "label_costs", "split"]
