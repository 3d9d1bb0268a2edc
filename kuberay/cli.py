"""`doka k8s render|apply|submit-training|reload-router|status`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from app.config import DEFAULT_CONFIG_PATH, ConfigError

# The committed examples: `doka k8s render --values kuberay/examples/values.yaml
#   --config config/gpu.example.yaml --out kuberay/examples` (tests keep them in sync).
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
GITIGNORE = "# written by `doka k8s render`: secret.yaml holds (or will hold) real keys\nsecret.yaml\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    k8s = subparsers.add_parser("k8s", help="KubeRay: render/apply the RayService, training RayJobs, router reloads")
    sub = k8s.add_subparsers(dest="k8s_command", metavar="K8S_COMMAND")

    def with_render_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="doka config YAML")
        p.add_argument("--values", help="k8s values YAML (image, node pools, storage, moat; see docs/kubernetes.md)")
        p.add_argument("--name", help="RayService name (default: doka)")
        p.add_argument("--namespace", help="namespace (default: default)")
        p.add_argument("--image", help="container image with doka installed")
        p.add_argument("--moat", action="store_true", default=None, help="air-gapped mode")
        p.add_argument("--allow-local", action="store_true", default=None,
                       help="render even with loopback api_base / relative local paths (they must exist in your pods)")

    def with_cluster_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        p.add_argument("--context", help="kubeconfig context")
        p.add_argument("--in-cluster", action="store_true", default=None, help="use the pod's service account")

    p = sub.add_parser("render", help="write rayservice.yaml, rayjob-train.yaml, secret.yaml, networkpolicy.yaml")
    with_render_args(p)
    p.add_argument("--out", help="directory to write to (default: print to stdout)")
    p.add_argument("--crds", help="validate against the KubeRay CRDs in this directory")
    p.set_defaults(handler=_render)

    p = sub.add_parser("apply", help="create or update the RayService")
    with_render_args(p)
    with_cluster_args(p)
    p.set_defaults(handler=_api_errors(_apply))

    p = sub.add_parser("submit-training", help="run router training as a RayJob on the RayService's cluster")
    with_render_args(p)
    with_cluster_args(p)
    p.add_argument("--family", help="router family (default: knn)")
    p.add_argument("--data", help="training data URL every Ray node can read (s3://...)")
    p.add_argument("--registry", help="artifact registry URL to publish to (s3://...)")
    p.add_argument("--job-name", help="RayJob name (default: <name>-train-<unix time>)")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait with --wait")
    p.set_defaults(handler=_api_errors(_submit_training))

    p = sub.add_parser("reload-router", help="point the router at another artifact, in place")
    with_cluster_args(p)
    p.add_argument("--name", default="doka", help="RayService name")
    p.add_argument("--namespace", default="default")
    p.add_argument("--artifact", help="artifact version (or `latest`)")
    p.add_argument("--registry", help="artifact registry URL")
    p.add_argument("--app-name", help="Serve application name (default: the first)")
    p.set_defaults(handler=_api_errors(_reload_router))

    p = sub.add_parser("status", help="RayService status (and a RayJob's with --job)")
    with_cluster_args(p)
    p.add_argument("--name", default="doka", help="RayService name")
    p.add_argument("--namespace", default="default")
    p.add_argument("--job", help="also show this RayJob")
    p.set_defaults(handler=_api_errors(_status))

    k8s.set_defaults(handler=lambda _args: k8s.print_help() or 2)


def _options(args: argparse.Namespace, **extra: Any):
    from app.config import load_config
    from kuberay.options import load_options

    cfg = load_config(args.config)
    opts = load_options(args.values, name=args.name, namespace=args.namespace, image=args.image, moat=args.moat,
                        allow_local=args.allow_local)
    if any(v is not None for v in extra.values()):
        training = opts.training.model_copy(update={k: v for k, v in extra.items() if v is not None})
        opts = opts.model_copy(update={"training": training})
    return cfg, opts


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _api_errors(handler):
    """Kubernetes API failures (403, 409, unreachable) become one clear line, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
        from urllib3.exceptions import HTTPError

        try:
            return handler(args)
        except ApiException as e:
            return _fail(f"Kubernetes API {e.status} {e.reason}: {(e.body or '').strip()[:500]}")
        except ConfigException as e:
            return _fail(f"no usable Kubernetes config (--kubeconfig, $KUBECONFIG or --in-cluster): {e}")
        except HTTPError as e:
            return _fail(f"cannot reach the Kubernetes API: {e}")

    return run


def _kuberay(args: argparse.Namespace, namespace: str):
    from kuberay.client import KubeRay, api_client

    return KubeRay(api_client(args.kubeconfig, args.context, args.in_cluster), namespace)


def _render(args: argparse.Namespace) -> int:
    from kuberay.render import render_all, render_files

    try:
        cfg, opts = _options(args)
        files = render_files(cfg, opts)
    except ConfigError as e:
        return _fail(str(e))
    if args.crds:
        from kuberay.validate import manifest_errors

        problems = [f"{n}: {err}" for n, obj in render_all(cfg, opts).items() for err in manifest_errors(obj, args.crds)]
        if problems:
            return _fail("rendered manifests do not validate:\n  " + "\n  ".join(problems))
    if not args.out:
        sys.stdout.write("---\n".join(files.values()))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    ignore = out / ".gitignore"  # secret.yaml is where the real keys go: never committed from here
    if not ignore.exists():
        ignore.write_text(GITIGNORE)
        print(f"wrote {ignore} (git never picks up secret.yaml here)")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from kuberay.render import rayservice, render_all

    try:
        cfg, opts = _options(args)
        render_all(cfg, opts)  # moat checks
        action, obj = _kuberay(args, opts.namespace).apply_rayservice(rayservice(cfg, opts))
    except ConfigError as e:
        return _fail(str(e))
    meta = obj["metadata"]
    print(f"RayService {meta['namespace']}/{meta['name']} {action} (resourceVersion {meta.get('resourceVersion')})")
    print(f"it reads API keys from Secret {opts.secret}: `doka k8s render` writes a template (secret.yaml)")
    return 0


def _submit_training(args: argparse.Namespace) -> int:
    from kuberay.client import KubeRayError
    from kuberay.render import rayjob

    try:
        cfg, opts = _options(args, family=args.family, data=args.data, registry=args.registry)
    except ConfigError as e:
        return _fail(str(e))
    kr = _kuberay(args, opts.namespace)
    job_name = args.job_name or f"{opts.name}-train-{int(time.time())}"
    try:
        obj = kr.submit_rayjob(rayjob(cfg, opts, name=job_name), rayservice=opts.name)
        print(f"RayJob {opts.namespace}/{job_name} submitted to Ray cluster "
              f"{obj['spec']['clusterSelector']['ray.io/cluster']}: {obj['spec']['entrypoint']}")
        if not args.wait:
            return 0
        result = kr.follow_rayjob(job_name, timeout_s=args.timeout,
                                  on_event=lambda r: print(f"  {r.deployment_status or '-'} / {r.job_status or '-'}"))
    except KubeRayError as e:
        return _fail(str(e))
    print(f"RayJob {job_name}: {result.job_status} {result.message or ''}".rstrip())
    return 0 if result.succeeded else 1


def _reload_router(args: argparse.Namespace) -> int:
    from kuberay.client import KubeRayError

    if not args.artifact and not args.registry:
        return _fail("reload-router needs --artifact and/or --registry")
    if args.artifact:
        from router.versions import VersionNameError, check_version

        try:
            check_version(args.artifact)
        except VersionNameError as e:
            return _fail(str(e))
    try:
        user_config = _kuberay(args, args.namespace).reload_router(
            args.name, artifact=args.artifact, registry=args.registry, app_name=args.app_name)
    except KubeRayError as e:
        return _fail(str(e))
    print(f"RayService {args.namespace}/{args.name}: router user_config -> {json.dumps(user_config)} "
          "(applied in place by KubeRay)")
    return 0


def _status(args: argparse.Namespace) -> int:
    from kuberay.client import KubeRayError

    kr = _kuberay(args, args.namespace)
    try:
        out: dict[str, Any] = kr.status(args.name)
        if args.job:
            job = kr.get_rayjob(args.job).get("status") or {}
            out["job"] = {k: job.get(k) for k in ("jobStatus", "jobDeploymentStatus", "message", "rayClusterName")}
    except KubeRayError as e:
        return _fail(str(e))
    print(json.dumps(out, indent=2))
    return 0
