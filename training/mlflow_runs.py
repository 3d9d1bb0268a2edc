"""`doka router train|eval ... --mlflow URI`: the run as an MLflow run (params, metrics, artifacts).

Off unless `--mlflow URI` is given (a tracking server `http://127.0.0.1:5000`, `sqlite:///mlflow.db`,
`databricks`, ...; `--mlflow-experiment NAME`, default `doka-router`). Uses MlflowClient with that
URI only: no process-wide MLflow state changes, so it never redirects anyone else's runs.

- train: params family, featurizer (id, dim), hyperparameters (`hp.<name>`), training data
  (sha256, rows, source), holdout, labels, version; metrics every number of the artifact's
  metadata `metrics` (holdout mse, AIQ, ...) and train_seconds; the artifact folder under `artifact/`.
- eval: params artifact version, family, data sha256, mode, strong/weak, task, bootstrap,
  thresholds; metrics every number of the report (APGR and its SE/CI, CPT(50%)/CPT(80%), AUC,
  AIQ, qualities and costs, random and oracle baselines, ...; curves left out); `report.json`,
  the plot when there is one, and a local `--artifact` folder under `artifact/`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "doka-router"
_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
_PARAM_MAX = 6000  # MLflow's param value limit is 6000 characters (8000 on newer servers)


def _key(name: str) -> str:
    return _BAD.sub("_", name)[:250]


def flat_metrics(obj: Any, prefix: str = "", skip: tuple[str, ...] = ("curve",)) -> dict[str, float]:
    """Every finite number in a nested report, keyed by its dotted path (lists of numbers by index)."""
    out: dict[str, float] = {}
    if isinstance(obj, bool):
        return out
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            out[_key(prefix)] = float(obj)
        return out
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if str(k) in skip:
                continue
            out.update(flat_metrics(v, f"{prefix}.{k}" if prefix else str(k), skip))
    elif isinstance(obj, (list, tuple)) and len(obj) <= 8 and all(isinstance(v, (int, float)) for v in obj):
        for i, v in enumerate(obj):
            out.update(flat_metrics(v, f"{prefix}.{i}", skip))
    return out


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_PARAM_MAX]


def log_run(
    tracking_uri: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str] | None = None,
    artifact_dirs: Mapping[str, str | Path] | None = None,
    artifact_files: Mapping[str, str | Path] | None = None,
    json_files: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One finished MLflow run; returns {run_id, experiment_id, experiment, tracking_uri, artifact_uri}."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    from mlflow.utils.time import get_current_time_millis

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={"mlflow.source.name": "doka router", **(tags or {})})
    run_id = run.info.run_id
    status = "FAILED"
    try:
        now = get_current_time_millis()
        plist = [Param(_key(k), _param(v)) for k, v in params.items() if v is not None]
        mlist = [Metric(_key(k), float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, max(len(plist), len(mlist)), 100):  # log_batch takes 100 params / 1000 metrics
            client.log_batch(run_id, metrics=mlist[i:i + 100], params=plist[i:i + 100],
                             tags=[RunTag("doka.kind", run_name.split(" ")[0])] if i == 0 else [])
        for dest, folder in (artifact_dirs or {}).items():
            client.log_artifacts(run_id, str(folder), dest)
        for dest, path in (artifact_files or {}).items():
            client.log_artifact(run_id, str(path), dest or None)
        if json_files:
            with tempfile.TemporaryDirectory() as tmp:
                for name, obj in json_files.items():
                    p = Path(tmp) / name
                    p.write_text(json.dumps(obj, indent=2, default=str))
                    client.log_artifact(run_id, str(p))
        status = "FINISHED"
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # MLflow prints the run's URL: stdout is the JSON report
            client.set_terminated(run_id, status)
    return {"run_id": run_id, "experiment_id": exp_id, "experiment": experiment, "tracking_uri": tracking_uri,
            "artifact_uri": client.get_run(run_id).info.artifact_uri}


def log_training(tracking_uri: str, artifact_dir: str | Path, experiment: str = DEFAULT_EXPERIMENT,
                 holdout: float | None = None, use_ray: bool = False) -> dict[str, Any]:
    """The training run behind a written artifact folder, from its metadata.json."""
    meta = json.loads((Path(artifact_dir) / "metadata.json").read_text())
    data = meta.get("training_data") or {}
    feat = meta.get("featurizer") or {}
    params: dict[str, Any] = {
        "family": meta["family"],
        "featurizer": feat.get("id"),
        "featurizer_dim": feat.get("dim"),
        "data_sha256": data.get("sha256"),
        "data_rows": data.get("records"),
        "data_source": data.get("source"),
        "holdout": holdout,
        "labels": meta.get("labels"),
        "n_labels": len(meta.get("labels") or []),
        "version": meta.get("version"),
        "ray": use_ray,
    }
    params.update({f"hp.{k}": v for k, v in (meta.get("hyperparameters") or {}).items()})
    metrics = flat_metrics(meta.get("metrics") or {})
    metrics["train_seconds"] = float(meta.get("train_seconds") or 0.0)
    return log_run(tracking_uri, experiment=experiment, run_name=f"train {meta['family']} {meta['version']}",
                   params=params, metrics=metrics, tags={"doka.artifact_version": meta["version"]},
                   artifact_dirs={"artifact": artifact_dir})


def log_evaluation(tracking_uri: str, report: Mapping[str, Any], experiment: str = DEFAULT_EXPERIMENT,
                   settings: Mapping[str, Any] | None = None, artifact_dir: str | Path | None = None,
                   plot: str | Path | None = None) -> dict[str, Any]:
    """The evaluation report as a run: settings and identities as params, its numbers as metrics."""
    ident = ("artifact", "family", "data_sha256", "mode", "strong", "weak", "task", "unknown_models")
    params: dict[str, Any] = {k: report.get(k) for k in ident if report.get(k) not in (None, [])}
    params.update({k: v for k, v in (settings or {}).items() if v is not None})
    metrics = flat_metrics({k: v for k, v in report.items() if k not in ident and k not in (settings or {})})
    dirs = {"artifact": artifact_dir} if artifact_dir and Path(artifact_dir).is_dir() else {}
    files = {"": plot} if plot and Path(plot).is_file() else {}
    return log_run(tracking_uri, experiment=experiment, run_name=f"eval {report.get('family')} {report.get('artifact')}",
                   params=params, metrics=metrics, tags={"doka.artifact_version": str(report.get("artifact"))},
                   artifact_dirs=dirs, artifact_files=files, json_files={"report.json": report})


__all__ = ["DEFAULT_EXPERIMENT", "flat_metrics", "log_run", "log_training", "log_evaluation"]
