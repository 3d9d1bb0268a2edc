"""`doka router ...`: import-routerbench, import-sources, train, eval, eval-cascade, calibrate, publish, bootstrap, versions.

Errors (bad data, unknown family, refused artifact) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, get_args

from deployments.cascade import Compare

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _params(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[name] = json.loads(raw)
        except ValueError:
            out[name] = raw
    return out


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _run(fn):
    def handler(args: argparse.Namespace) -> int:
        from router.artifact import ArtifactError
        from router.families import FamilyError
        from router.featurizer import FeaturizerError
        from training.dataset import DatasetError

        try:
            return fn(args) or 0
        except (ArtifactError, DatasetError, FamilyError, FeaturizerError, ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return handler


def _router(args: argparse.Namespace, required: bool = True) -> Any:
    """The artifact `--artifact PATH` or `--registry URL [--artifact VERSION]` names (None if
    neither is given and none is required)."""
    from router.runtime import LearnedRouter

    if args.registry:
        return LearnedRouter.load(args.registry, args.artifact or "latest")
    if args.artifact:
        return LearnedRouter.from_path(args.artifact)
    if required:
        raise ValueError("give --artifact PATH (or --registry URL [--artifact VERSION])")
    return None


def _import(args: argparse.Namespace) -> int:
    from training.routerbench import import_routerbench

    _print(import_routerbench(args.src, args.out))
    return 0


def _import_sources(args: argparse.Namespace) -> int:
    from training.sources import SOURCES, import_sources

    keys = [k for k, src in SOURCES.items() if src.permitted]
    keys += [k for k in ("alpacaeval", "routerdc") if k in (args.opt_in or [])]
    _print(import_sources(args.out, include=keys, more_dir=args.more, routerbench_dir=args.routerbench))
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.dataset import parse_cost_flags
    from training.train import train

    if args.ray:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    path = train(
        args.data,
        args.family,
        args.out,
        featurizer_id=args.featurizer,
        params=_params(args.param),
        holdout=args.holdout,
        use_ray=args.ray,
        config_path=args.config,
        per_call_costs=parse_cost_flags(args.cost),
        progress=not args.quiet,
    )
    meta = json.loads((path / "metadata.json").read_text())
    out = {"artifact": str(path), "version": meta["version"], "family": meta["family"], "labels": meta["labels"],
           "metrics": meta["metrics"], "train_seconds": meta["train_seconds"]}
    rc = 0
    if args.mlflow:
        from training.mlflow_runs import log_training

        out["mlflow"], rc = _mlflow(lambda: log_training(args.mlflow, path, args.mlflow_experiment,
                                                         holdout=args.holdout, use_ray=args.ray))
    _print(out)
    return rc


def _mlflow(log) -> tuple[dict[str, Any], int]:
    """Log the run to MLflow: ({run_id, ...}, 0), or ({error}, 1) when it could not be logged
    (the artifact or report is still written / printed)."""
    try:
        return log(), 0
    except ImportError as e:
        msg = f"MLflow is not installed ({e}): pip install 'doka[mlflow]'"
    except Exception as e:  # noqa: BLE001 - a server down must not lose the result
        msg = f"{type(e).__name__}: {e}"
    print(f"error: could not log the MLflow run: {msg}", file=sys.stderr)
    return {"error": msg}, 1


def _eval(args: argparse.Namespace) -> int:
    from training.dataset import parse_cost_flags
    from training.evaluate import apgr_summary, evaluate, parse_alias_flags, plot

    report = evaluate(
        _router(args),
        args.data,
        aliases=parse_alias_flags(args.alias),
        strong=args.strong,
        weak=args.weak,
        num_thresholds=args.num_thresholds,
        per_call_costs=parse_cost_flags(args.cost),
        config_path=args.config,
        assumed_output_tokens=args.assumed_output_tokens,
        progress=not args.quiet,
        bootstrap=args.bootstrap,
        task=args.task,
    )
    if report.get("mode") == "two-model" and not args.quiet:
        print(apgr_summary(report), file=sys.stderr)
    if args.plot:
        report["plot"] = str(plot(report, args.plot))
    rc = 0
    if args.mlflow:
        from training.mlflow_runs import log_evaluation

        settings = {"num_thresholds": args.num_thresholds, "bootstrap": args.bootstrap, "data": args.data,
                    "registry": args.registry, "aliases": args.alias, "assumed_output_tokens": args.assumed_output_tokens}
        local = args.artifact if args.artifact and not args.registry else None
        report["mlflow"], rc = _mlflow(lambda: log_evaluation(args.mlflow, report, args.mlflow_experiment, settings,
                                                              artifact_dir=local, plot=report.get("plot")))
    if not args.curve:
        report["router"].pop("curve", None)
    print(json.dumps(report, default=str))
    return rc


def _eval_cascade(args: argparse.Namespace) -> int:
    from training.cascade_eval import cascade_summary, evaluate_cascade
    from training.evaluate import parse_alias_flags

    report = evaluate_cascade(args.data, weak=args.weak, verifier=args.verifier, strong=args.strong,
                              compare=args.compare, aliases=parse_alias_flags(args.alias),
                              router=_router(args, required=False), bootstrap=args.bootstrap, task=args.task)
    if not args.quiet:
        print(cascade_summary(report), file=sys.stderr)
    print(json.dumps(report, default=str))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from training.calibrate import calibrate, read_prompts, write_cost_weight

    report = calibrate(_router(args), read_prompts(args.data), args.strong, args.weak, args.target_strong_share, progress=not args.quiet)
    if report.get("note"):  # the target was not met within 3 points: say so, not only in the JSON
        print(f"doka: warning: {report['note']}", file=sys.stderr)
    if args.write_config:
        report["config"] = str(write_cost_weight(args.write_config, report["cost_weight"]))
    _print(report)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from router.registry import Registry

    reg = Registry(args.registry)
    version = reg.publish(args.artifact, set_latest=not args.no_latest)
    out: dict[str, Any] = {"version": version, "registry": args.registry, "latest": reg.latest_version()}
    if args.reload:
        out["reload"] = _reload_running(args.config, version, args.address)
    _print(out)
    return 0


def _reload_running(config: str | None, version: str | None, address: str | None) -> dict[str, Any]:
    """Reconfigure the running app's router the way Kubernetes does (Serve user_config -> `reconfigure`)."""
    import ray

    from app.config import DEFAULT_CONFIG_PATH, load_config
    from training.from_traces import gateway_base, reconfigure_live, served_version, wait_served

    cfg = load_config(config or DEFAULT_CONFIG_PATH)
    if not cfg.router.registry:
        raise ValueError("router.registry is not set in the config: nothing to reload from")
    from router.registry import Registry

    if version and cfg.router.artifact != version:  # pin it (a followed `latest` stays for the default)
        cfg = cfg.model_copy(update={"router": cfg.router.model_copy(update={"artifact": version})})
    target = version or (Registry(cfg.router.registry).latest_version() if cfg.router.artifact == "latest"
                         else cfg.router.artifact)
    if not target:
        raise ValueError(f"no artifact in {cfg.router.registry} to reload")
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    via = reconfigure_live(cfg, target)
    _, source = served_version(cfg)
    state = wait_served(cfg, None, target, timeout_s=120) if source == "gateway" else "unknown (no gateway answered)"
    return {"version": target, "via": via, "serving": state, "gateway": gateway_base(cfg)}


def _reload(args: argparse.Namespace) -> int:
    report = _reload_running(args.config, args.version, args.address)
    _print(report)
    return 0 if report["serving"] == "ready" else 1


def _bootstrap(args: argparse.Namespace) -> int:
    from training.bootstrap import bootstrap

    _print(bootstrap(args.registry, args.routerbench, args.family, args.work_dir, args.force, progress=not args.quiet))
    return 0


def _versions(args: argparse.Namespace) -> int:
    from router.registry import Registry

    reg = Registry(args.registry)
    _print({"latest": reg.latest_version(), "versions": reg.list_versions()})
    return 0


def _mlflow_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", metavar="TRACKING_URI",
                   help="also log this run to MLflow (http://127.0.0.1:5000, sqlite:///mlflow.db, databricks, ...): "
                        "params, metrics and the artifact; the run id is in the JSON under `mlflow`. Off by default")
    p.add_argument("--mlflow-experiment", default="doka-router", metavar="NAME", help="MLflow experiment (default doka-router)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from router.featurizer import ROUTING_FEATURIZER_ID
    from training.bootstrap import DEFAULT_FAMILY
    from training.routerbench import DEFAULT_ROUTERBENCH_DIR

    router = subparsers.add_parser("router", help="learned routing: datasets, training, evaluation, registry")
    sub = router.add_subparsers(dest="router_command", metavar="ROUTER_COMMAND")
    router.set_defaults(handler=lambda a: (router.print_help(), 2)[1])

    p = sub.add_parser("import-routerbench", help="convert RouterBench CSVs to doka JSONL (train.jsonl, test.jsonl)")
    p.add_argument("--src", default=DEFAULT_ROUTERBENCH_DIR, help="folder with <task>_<split>.csv files")
    p.add_argument("--out", default=".doka/data/routerbench", help="output folder")
    p.set_defaults(handler=_run(_import))

    from training.sources import DEFAULT_MORE_DIR

    p = sub.add_parser("import-sources", help="RouterBench + ../shared/data/routing-more in one JSONL, labels on [0, 1] "
                       "(docs/routing.md); non-commercial / unlicensed sources only with --opt-in")
    p.add_argument("--routerbench", default=DEFAULT_ROUTERBENCH_DIR)
    p.add_argument("--more", default=DEFAULT_MORE_DIR, help="the routing-more folder")
    p.add_argument("--opt-in", nargs="*", choices=["alpacaeval", "routerdc"],
                   help="also import alpacaeval (CC BY-NC 4.0) and/or routerdc (no licence stated)")
    p.add_argument("--out", default=".doka/data/combined.jsonl")
    p.set_defaults(handler=_run(_import_sources))

    p = sub.add_parser("train", help="train one router family and write a signed artifact")
    p.add_argument("--family", required=True, help="knn | mlp | svm | logreg | mf | difficulty | ensemble | gated")
    p.add_argument("--data", required=True, help="JSONL dataset")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--featurizer", default=ROUTING_FEATURIZER_ID,
                   help="featurizer id: minilm-l6-v2-static[@t<tokens>] (static MiniLM token vectors), "
                        "minilm-l6-v2[@t<tokens>] (the full transformer), hashing-<dim>; '+stats' appends "
                        f"prompt statistics (default {ROUTING_FEATURIZER_ID})")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="family hyperparameter (JSON value)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction held out for the metrics in the metadata (0: none)")
    p.add_argument("--cost", action="append", metavar="MODEL=USD", help="per-call cost for models without costs")
    p.add_argument("--config", default=None, help="doka config whose prices fill missing costs")
    p.add_argument("--ray", action="store_true", help="embed with Ray Data map_batches (connects to RAY_ADDRESS if set)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _mlflow_flags(p)
    p.set_defaults(handler=_run(_train))

    p = sub.add_parser("eval", help="evaluate an artifact on a dataset; prints one JSON object")
    p.add_argument("--artifact", help="artifact folder, or a version when --registry is given")
    p.add_argument("--registry", help="registry URL to load the artifact from")
    p.add_argument("--data", required=True, help="JSONL dataset")
    p.add_argument("--strong", help="two-model mode: the strong model")
    p.add_argument("--weak", help="two-model mode: the weak model")
    p.add_argument("--alias", action="append", metavar="DATASET_MODEL=ARTIFACT_MODEL",
                   help="read a dataset model under the artifact's name (e.g. mistralai/mixtral-8x7b-chat=mixtral-8x7b-chat)")
    p.add_argument("--num-thresholds", type=int, default=10, help="quantile bins of the threshold sweep (RouteLLM: 10)")
    p.add_argument("--cost", action="append", metavar="MODEL=USD", help="per-call cost for models without costs")
    p.add_argument("--config", default=None, help="doka config whose prices fill missing costs (default config/default.yaml)")
    p.add_argument("--assumed-output-tokens", type=int, default=256, help="output tokens assumed when pricing from config")
    p.add_argument("--plot", help="write the curve to this PNG")
    p.add_argument("--curve", action="store_true", help="include the curve points in the JSON")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N",
                   help="two-model mode: prompt resamples for the APGR standard error and 95%% interval (0: off)")
    p.add_argument("--task", help="only the records with this `task` (e.g. arc-challenge)")
    p.add_argument("--quiet", action="store_true")
    _mlflow_flags(p)
    p.set_defaults(handler=_run(_eval))

    p = sub.add_parser("eval-cascade", help="score a cascade (weak + verifier, strong on disagreement) on a dataset "
                       "whose records carry each model's answer; prints one JSON object")
    p.add_argument("--data", required=True, help="JSONL dataset with `responses` ({model: answer}) per record")
    p.add_argument("--weak", required=True, help="the model whose answer is kept when the verifier agrees")
    p.add_argument("--verifier", required=True, help="the second cheap model")
    p.add_argument("--strong", required=True, help="the model asked when they disagree")
    p.add_argument("--compare", choices=list(get_args(Compare)), default="text",
                   help="agreement rule, as a cascade's `compare` in the config")
    p.add_argument("--alias", action="append", metavar="DATASET_MODEL=NAME", help="rename a dataset model (repeatable)")
    p.add_argument("--artifact", help="also score this router at the cascade's share of strong calls (folder, or "
                   "a version with --registry)")
    p.add_argument("--registry", help="registry URL to load --artifact from")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="resamples for the standard error")
    p.add_argument("--task", help="only the records with this `task` (e.g. arc-challenge)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_run(_eval_cascade))

    p = sub.add_parser("calibrate", help="the cost weight that sends a given share of a traffic sample to the strong model")
    p.add_argument("--artifact", help="artifact folder, or a version when --registry is given")
    p.add_argument("--registry", help="registry URL to load the artifact from")
    p.add_argument("--data", required=True, help="JSONL traffic sample, one {\"prompt\": ...} per line (a dataset works too)")
    p.add_argument("--target-strong-share", type=float, required=True, help="wanted share of strong calls, 0..1 (e.g. 0.3)")
    p.add_argument("--strong", default="gpt-4-1106-preview", help="the strong (dear) model, as the artifact names it")
    p.add_argument("--weak", default="mixtral-8x7b-chat", help="the weak (cheap) model, as the artifact names it")
    p.add_argument("--write-config", metavar="FILE", help="also set router.cost_weight in this doka config")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_run(_calibrate))

    p = sub.add_parser("publish", help="publish a signed artifact to a registry and point `latest` at it")
    p.add_argument("--artifact", required=True)
    p.add_argument("--registry", required=True, help="local folder or fsspec URL (s3://bucket/prefix)")
    p.add_argument("--no-latest", action="store_true", help="publish without moving `latest`")
    p.add_argument("--reload", action="store_true", help="then reload the running local app (`doka router reload`)")
    p.add_argument("--config", help="with --reload: the running app's doka config (default config/default.yaml)")
    p.add_argument("--address", help="with --reload: the Ray cluster (default RAY_ADDRESS or auto)")
    p.set_defaults(handler=_run(_publish))

    p = sub.add_parser("reload", help="make the running app load its router artifact now (Serve reconfigure, "
                       "as on Kubernetes): the registry's latest, or --version")
    p.add_argument("--config", help="the running app's doka config (default config/default.yaml)")
    p.add_argument("--version", help="pin this artifact version instead of following the config's artifact")
    p.add_argument("--address", help="the Ray cluster (default RAY_ADDRESS or auto)")
    p.set_defaults(handler=_run(_reload))

    p = sub.add_parser("bootstrap", help="train and publish the default router if the registry has none")
    p.add_argument("--registry", default=".doka/registry")
    p.add_argument("--routerbench", default=DEFAULT_ROUTERBENCH_DIR, help="RouterBench CSV folder (seed set if missing)")
    p.add_argument("--family", default=DEFAULT_FAMILY)
    p.add_argument("--work-dir", default=".doka")
    p.add_argument("--force", action="store_true", help="train and publish even if `latest` exists")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_run(_bootstrap))

    p = sub.add_parser("versions", help="list a registry's versions and `latest`")
    p.add_argument("--registry", required=True)
    p.set_defaults(handler=_run(_versions))
