"""`doka train-from-traces`: the learning loop.

traces + feedback -> routing dataset -> train -> evaluate against the live artifact on a
held-back slice -> publish only if better -> reconfigure the running app.

A request's feedback score becomes the score of the model that answered it, for that prompt;
requests with the same prompt are merged into one dataset row (mean per model). An optional
base dataset (e.g. the RouterBench import) supplies the other rows so one day of feedback
refines the router rather than replacing it.

Runs locally (`doka train-from-traces --config ...`) or as a Ray job on the gateway's cluster
(`ray job submit -- doka train-from-traces ...`); both reconfigure the app through Serve.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from app.config import DEFAULT_CONFIG_PATH, DokaConfig, load_config
from observability.feedback import load_joined
from observability.trace_store import REDACTED_PREFIX, traces_root


# ---------------------------------------------------------------- traces -> dataset
def label_for(cfg: DokaConfig, model: str) -> str:
    """The name a router artifact uses for a gateway model (its route_label, else its name)."""
    entry = cfg.model(model)
    return (entry.model_info.route_label if entry and entry.model_info.route_label else model)


def prompt_id(prompt: str) -> str:
    return "trace-" + hashlib.sha256(prompt.encode()).hexdigest()[:16]


def dataset_rows(joined: list[dict[str, Any]], cfg: DokaConfig) -> list[dict[str, Any]]:
    """Joined traces -> dataset rows `{"id","prompt","scores","costs","n_feedback"}`.

    Skips failed requests, requests without a stored prompt, and redacted prompts (the
    router cannot learn from a hash).
    """
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    costs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in joined:
        prompt, model = t.get("prompt"), t.get("model")
        if not prompt or not model or prompt.startswith(REDACTED_PREFIX) or int(t.get("status_code") or 0) >= 400:
            continue
        entry = cfg.model(model)
        if entry is not None and entry.model_info.mode == "embedding":  # not a routing choice
            continue
        label = label_for(cfg, model)
        scores[prompt][label].append(float(t["feedback_score"]))
        if t.get("cost") is not None:
            costs[prompt][label].append(float(t["cost"]))
    rows = []
    for prompt, per_model in scores.items():
        row: dict[str, Any] = {
            "id": prompt_id(prompt),
            "prompt": prompt,
            "scores": {m: sum(v) / len(v) for m, v in per_model.items()},
            "n_feedback": sum(len(v) for v in per_model.values()),
        }
        if costs[prompt]:
            row["costs"] = {m: sum(v) / len(v) for m, v in costs[prompt].items()}
        rows.append(row)
    return rows


def merge_with_base(rows: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Base rows, with feedback overriding the scores of the same prompt; new prompts appended."""
    by_prompt = {r["prompt"]: r for r in rows}
    out = []
    for b in base:
        fb = by_prompt.pop(b["prompt"], None)
        if fb is None:
            out.append(b)
        else:
            out.append({**b, "scores": {**b["scores"], **fb["scores"]},
                        "costs": {**(b.get("costs") or {}), **(fb.get("costs") or {})}})
    return out + list(by_prompt.values())


def build_dataset(cfg: DokaConfig, out_path: Path, traces_url: str | None = None,
                  base_path: str | None = None) -> tuple[Path, int]:
    """Write the routing dataset JSONL; returns (path, number of rows that came from feedback)."""
    joined = load_joined(traces_url or traces_root(cfg))
    rows = dataset_rows(joined, cfg)
    if not rows:
        raise SystemExit(f"no usable feedback under {traces_url or traces_root(cfg)}: "
                         "post scores to /v1/feedback first (and keep observability.store_prompts on)")
    if base_path:
        base = [json.loads(line) for line in Path(base_path).read_text().splitlines() if line.strip()]
        all_rows = merge_with_base(rows, base)
    else:
        all_rows = rows
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in all_rows))
    return out_path, len(rows)


# ---------------------------------------------------------------- reconfigure the live app
def _dashboard_url(explicit: str | None) -> str:
    """The Ray dashboard (Serve REST API); a Ray job's driver runs on the head, so localhost works."""
    if explicit:
        return explicit
    for var in ("RAY_DASHBOARD_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith("http"):
            return value
    return "http://127.0.0.1:8265"


def reconfigure_live(cfg: DokaConfig, version: str, dashboard_url: str | None = None) -> str:
    """Point the running app's router at artifact `version`; returns how.

    An app that follows `latest` keeps following it: its user_config keeps `artifact: latest` and
    gains `published: <version>`, a key the router ignores but whose change makes Serve call
    `reconfigure`, which loads the registry's (new) latest. A pinned app is re-pinned to `version`.

    A declaratively deployed app (`serve deploy`, RayService, the dashboard REST API) gets the
    router `user_config` of its Router deployment (or its Ingress, `router.placement: ingress`) patched through the Serve REST API, which Serve applies in place
    (`reconfigure` on each replica, no restart). An app started with `serve.run` is redeployed
    through the Python API with the new router settings (`serve.run` with the same app).
    """
    from app.serve_config import router_owner, router_user_config

    app_name = cfg.server.app_name
    router_name = router_owner(cfg)  # Router, or Ingress when the router runs in the ingress
    follows_latest = cfg.router.artifact == "latest"
    new_cfg = cfg if follows_latest else cfg.model_copy(
        update={"router": cfg.router.model_copy(update={"artifact": version})})
    user_config = {**router_user_config(new_cfg), **({"published": version} if follows_latest else {})}

    # this process's own cluster first (a Ray job's driver, or a test): no dashboard needed
    local = local_declarative_apps() if dashboard_url is None else {}
    deployed = local if app_name in local else _declarative_apps(dashboard_url)
    if deployed is not None and app_name in deployed:
        apps = list(deployed.values())
        target = deployed[app_name]
        deployments = [d for d in target.get("deployments", []) if d.get("name") != router_name]
        current = next((d for d in target.get("deployments", []) if d.get("name") == router_name), {"name": router_name})
        deployments.append({**current, "user_config": user_config})
        apps[list(deployed).index(app_name)] = {**target, "deployments": deployments}
        if app_name in local:
            from ray.serve.context import _get_global_client
            from ray.serve.schema import ServeDeploySchema

            _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": apps}))
            return "controller"
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        ServeSubmissionClient(_dashboard_url(dashboard_url)).deploy_applications({"applications": apps})
        return "rest"

    from ray import serve

    from app.graph import build_app

    serve.run(build_app(new_cfg), name=app_name, route_prefix=cfg.server.route_prefix, blocking=False)
    return "serve.run"


def local_declarative_apps() -> dict[str, dict[str, Any]]:
    """Like `_declarative_apps`, through this process's own Serve controller connection (no dashboard)."""
    try:
        import ray
        from ray.serve.context import _get_global_client

        if not ray.is_initialized():
            return {}
        client = _get_global_client(raise_if_no_controller_running=False)
        details = client.get_serve_details() if client is not None else {}
    except Exception:
        return {}
    return {name: app["deployed_app_config"] for name, app in (details.get("applications") or {}).items()
            if app.get("deployed_app_config") and app.get("source") == "declarative"}


def _declarative_apps(dashboard_url: str | None) -> dict[str, dict[str, Any]] | None:
    """name -> deployed_app_config of apps deployed declaratively, or None if the REST API is unreachable."""
    try:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        details = ServeSubmissionClient(_dashboard_url(dashboard_url)).get_serve_details()
    except Exception:
        return None
    out = {}
    for name, app in (details.get("applications") or {}).items():
        if app.get("deployed_app_config") and app.get("source") == "declarative":
            out[name] = app["deployed_app_config"]
    return out


# ---------------------------------------------------------------- evaluate, publish, loop
def replay_value(predicted: Any, scores: Any) -> tuple[float, int]:
    """Mean observed score of the model each router would pick, over rows where that pick was scored.

    Trace feedback is sparse (one model per request), so this replays logged outcomes instead
    of needing every model scored on every prompt. Returns (value, rows used).
    """
    import numpy as np

    picks = np.asarray(predicted).argmax(axis=1)
    got = np.asarray(scores)[np.arange(len(picks)), picks]
    known = ~np.isnan(got)
    return (float(got[known].mean()) if known.any() else float("nan")), int(known.sum())


def _predictions(router: Any, prompts: list[str], labels: list[str]) -> Any:
    """[n, len(labels)] predicted quality; labels the router does not know get -inf (never picked)."""
    import numpy as np

    P = router.predict(prompts)
    out = np.full((len(prompts), len(labels)), -np.inf)
    for j, lab in enumerate(labels):
        if lab in router.labels:
            out[:, j] = P[:, router.labels.index(lab)]
    return out


def compare(candidate: Any, current: Any | None, heldout: Any) -> dict[str, Any]:
    """Replay both routers on the held-back rows; `better` decides publication."""
    cand_value, n = replay_value(_predictions(candidate, heldout.prompts, heldout.labels), heldout.scores)
    report: dict[str, Any] = {"heldout_rows": len(heldout), "candidate": {"version": candidate.version, "value": cand_value, "rows": n}}
    if current is None:
        report["current"] = None
        report["better"] = n > 0
        return report
    cur_value, m = replay_value(_predictions(current, heldout.prompts, heldout.labels), heldout.scores)
    report["current"] = {"version": current.version, "value": cur_value, "rows": m}
    import math

    report["better"] = n > 0 and (math.isnan(cur_value) or cand_value > cur_value)
    return report


def run_loop(
    cfg: DokaConfig,
    *,
    work_dir: Path,
    traces_url: str | None = None,
    base_dataset: str | None = None,
    family: str = "knn",
    holdout: float = 0.25,
    seed: int = 0,
    reconfigure: bool = True,
    dashboard_url: str | None = None,
    force: bool = False,
    config_path: str | None = None,
    gateway_url: str | None = None,
) -> dict[str, Any]:
    """The whole loop; returns a report (also printed by the CLI)."""
    from router.registry import Registry
    from router.runtime import LearnedRouter
    from training.dataset import load_jsonl, split
    from training.train import train

    if not cfg.router.registry:
        raise SystemExit("router.registry is not set in the config: nowhere to publish")
    key = signing_key_or_exit(cfg)
    data_path, n_feedback = build_dataset(cfg, work_dir / "dataset.jsonl", traces_url, base_dataset)
    ds = load_jsonl(data_path)
    train_ds, heldout = split(ds, test_fraction=holdout, seed=seed) if len(ds) >= 4 else (ds, ds)
    params = {"n_neighbors": max(1, min(10, len(train_ds) // 2))} if family == "knn" else None
    artifact = train(train_ds, family, work_dir / "artifact", params=params, holdout=0, signing_key=key,
                     config_path=config_path, progress=False, seed=seed)
    candidate = LearnedRouter.from_path(artifact, key)
    registry = Registry(cfg.router.registry)
    current = None
    live, live_from = served_version(cfg, gateway_url)
    if live is None and live_from == "config":
        live = registry.latest_version() if cfg.router.artifact == "latest" else cfg.router.artifact
    refused = None
    if live:
        try:
            current = LearnedRouter.load(cfg.router.registry, live, key)
        except Exception as e:  # the served artifact does not verify with this key: refuse, unless forced
            refused = (f"the served artifact {live} cannot be loaded with this signing key ({type(e).__name__}: "
                       f"{e}); a candidate signed with it would not load in the gateway either. Use the "
                       "gateway's key (config router.signing_key, DOKA_SIGNING_KEY, or the data dir's "
                       "signing.key), or --force to publish anyway")
    report: dict[str, Any] = {"dataset": str(data_path), "rows": len(ds), "feedback_rows": n_feedback,
                              "served": {"version": live, "from": live_from},
                              **compare(candidate, current, heldout)}
    if refused and not force:
        report.update(better=False, published=None, refused=refused)
        return report
    if not (report["better"] or force):
        report["published"] = None
        return report
    previous_latest = registry.latest_version()
    version = registry.publish(artifact, set_latest=True, key=key)
    report["published"] = version
    if reconfigure:
        report["reconfigured_via"] = reconfigure_live(cfg, version, dashboard_url)
        if live_from == "gateway":  # the gateway must serve it; if it cannot, put the previous one back
            state = wait_served(cfg, gateway_url, version)
            report["serving"] = state
            if state != "ready" and live:  # never leave the live router degraded
                if previous_latest:
                    registry.set_latest(previous_latest)
                reconfigure_live(cfg, live, dashboard_url)
                report["rolled_back_to"] = live
    return report


# ---------------------------------------------------------------- the served artifact, the key
def signing_key_or_exit(cfg: DokaConfig) -> bytes:
    """The one signing-key rule (router.reloader.router_signing_key: config, env, then the local
    key file), or a one-line exit naming the three places to put one."""
    from router.reloader import router_signing_key

    key = router_signing_key(cfg)
    if key is None:
        raise SystemExit("doka: no artifact signing key: set router.signing_key in the config or "
                         f"DOKA_SIGNING_KEY, or create {cfg.data_path('signing.key')} with `doka router bootstrap`")
    return key


def gateway_base(cfg: DokaConfig, explicit: str | None = None) -> str:
    """The running gateway's base URL (`--gateway`, else server.host:port + route_prefix)."""
    if explicit:
        return explicit.rstrip("/")
    return f"http://{cfg.server.client_host}:{cfg.server.port}{cfg.server.route_prefix.rstrip('/')}"


def _router_status(cfg: DokaConfig, gateway_url: str | None) -> dict[str, Any] | None:
    import httpx

    try:
        r = httpx.get(gateway_base(cfg, gateway_url) + "/health/readiness", timeout=10)
        return (r.json().get("router") or {}) if r.status_code in (200, 503) else None
    except Exception:
        return None


def served_version(cfg: DokaConfig, gateway_url: str | None = None) -> tuple[str | None, str]:
    """(the artifact version the running gateway serves, "gateway"), or (None, "config") when no
    gateway answers (then the config's artifact is the reference)."""
    status = _router_status(cfg, gateway_url)
    if status is None:
        return None, "config"
    return status.get("artifact_version"), "gateway"


def wait_served(cfg: DokaConfig, gateway_url: str | None, version: str, timeout_s: float = 120) -> str:
    """Wait until the gateway serves `version`: "ready", or the router state that stopped it."""
    deadline = time.time() + timeout_s
    state = "unknown"
    while time.time() < deadline:
        status = _router_status(cfg, gateway_url) or {}
        state = status.get("state", "unknown")
        if status.get("artifact_version") == version:
            return "ready"
        if state == "degraded" and not status.get("loading"):
            return "degraded"
        time.sleep(0.5)
    return state


# ---------------------------------------------------------------- CLI
def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-from-traces",
        help="traces + feedback -> dataset -> train -> evaluate vs live -> publish if better -> reconfigure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="doka config (registry, traces location, app name)")
    p.add_argument("--traces", default=None, help="trace store root (default: observability.traces_url or data_dir/traces)")
    p.add_argument("--base-dataset", default=None, help="routing dataset JSONL to refine (e.g. the RouterBench import)")
    p.add_argument("--family", default="knn", help="router family to train (knn, mlp, svm, logreg, mf, difficulty, ensemble, gated)")
    p.add_argument("--holdout", type=float, default=0.25, help="fraction of rows held back for the comparison")
    p.add_argument("--work-dir", default=None, help="where the dataset and the candidate artifact go")
    p.add_argument("--dashboard", default=None, help="Ray dashboard URL for the Serve REST API (default http://127.0.0.1:8265)")
    p.add_argument("--address", default=None, help="Ray cluster to reconfigure (default: RAY_ADDRESS or auto)")
    p.add_argument("--no-reconfigure", action="store_true", help="publish only; leave the running app alone")
    p.add_argument("--force", action="store_true",
                   help="publish even if the candidate is not better or the served artifact cannot be loaded")
    p.add_argument("--gateway", default=None,
                   help="the running gateway's URL, asked which artifact it serves (default: server.host:port)")
    p.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    work = Path(args.work_dir) if args.work_dir else cfg.data_path("loop", time.strftime("%Y%m%dT%H%M%S"))
    if not args.no_reconfigure:
        import ray

        if not ray.is_initialized():
            ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    report = run_loop(cfg, work_dir=work, traces_url=args.traces, base_dataset=args.base_dataset, family=args.family,
                      holdout=args.holdout, reconfigure=not args.no_reconfigure, dashboard_url=args.dashboard,
                      force=args.force, config_path=args.config, gateway_url=args.gateway)
    print(json.dumps(report, indent=2, default=str))
    if report.get("refused"):
        print(f"doka: not published: {report['refused']}", file=sys.stderr)
        return 1
    return 0
