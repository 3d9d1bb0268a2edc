"""What a doka config means for Kubernetes before anything is rendered: the Secret's variable
names, the GPUs its deployments ask for, and the problems that refuse a render (a SQLite ledger
on a container filesystem, moat mode with a remote artifact source, targets that exist only on
this machine). `kuberay.render` reads these; `doka k8s render` prints the problems."""

from __future__ import annotations

import ipaddress
import math
from typing import Any
from urllib.parse import urlsplit

from app.config import ENV_PREFIX, DokaConfig
from app.serve_config import config_dict, deployment_options
from kuberay.options import RenderOptions

DATABASE_ENV = "DOKA_DATABASE_URL"
ACCOUNTS_MOUNT = "/var/lib/doka-accounts"  # storage.sqlite_volume_claim is mounted here
S3_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_OBJECT_STORE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://")


def secret_env_names(cfg: DokaConfig, opts: RenderOptions) -> list[str]:
    """Every env var the pods need from the Secret: `os.environ/` refs (defaults included)."""
    names: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, str) and v.startswith(ENV_PREFIX):
            names.add(v[len(ENV_PREFIX):])
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(cfg.model_dump(mode="json"))
    if opts.storage.postgres:
        names.add(DATABASE_ENV)
    if opts.storage.s3_endpoint:
        names.update(S3_SECRET_ENV)
    return sorted(names)


def needed_gpus(cfg: DokaConfig) -> int:
    """GPUs the config can use at its scaling limits: vLLM replicas x parallelism + the GPU shares
    of the Serve deployments the graph has (a router or egress placed in the ingress has none)."""
    total = 0.0
    for m in cfg.model_list:
        if m.vllm is None:
            continue
        bundles = (m.vllm.placement_group_config or {}).get("bundles")
        if bundles:  # an explicit placement group says exactly what one replica takes
            per_replica = sum(float(b.get("GPU", 0)) for b in bundles)
        else:
            kw = m.vllm.engine_kwargs
            per_replica = int(kw.get("tensor_parallel_size", 1)) * int(kw.get("pipeline_parallel_size", 1))
        total += m.vllm.max_replicas * per_replica
    for opts in deployment_options(cfg):  # the deployments this config's graph has (placements)
        gpus = float(opts["ray_actor_options"].get("num_gpus", 0) or 0)
        if gpus:
            auto = opts.get("autoscaling_config") or {}
            replicas = auto.get("max_replicas") or opts.get("num_replicas")
            total += gpus * (replicas if isinstance(replicas, int) else 1)
    return math.ceil(total)


def moat_problems(cfg: DokaConfig) -> list[str]:
    """What would call out of an air-gapped cluster, or load unsigned artifacts."""
    problems = []
    if not cfg.router.signing_key:
        problems.append("router.signing_key must be set: moat mode only loads signed router artifacts")
    for m in cfg.model_list:
        if m.provider == "litellm" and not m.litellm_params.get("api_base"):
            problems.append(f"model {m.model_name!r}: litellm_params.api_base must name an internal endpoint")
        if m.vllm is not None:
            src = m.vllm.model_source
            if not (src.startswith("/") or src.startswith(_OBJECT_STORE_SCHEMES)):
                problems.append(
                    f"model {m.model_name!r}: vllm.model_source {src!r} would download from a hub; "
                    "use an absolute path or an s3:// (MinIO) URL"
                )
    if cfg.observability.langfuse:
        problems.append("observability.langfuse must be false (or point LANGFUSE_HOST at an internal host via extra_env)")
    return problems


def accounts_problems(cfg: DokaConfig, opts: RenderOptions) -> list[str]:
    """Keys required but the ledger would be SQLite on a pod's own disk (gone on reschedule)."""
    if not cfg.accounts.require_keys or opts.storage.postgres or opts.storage.sqlite_volume_claim:
        return []
    url = cfg.accounts.database_url
    if url and not url.startswith("sqlite"):  # PostgreSQL, or os.environ/NAME the operator fills in
        return []
    return ["accounts.require_keys is true but the keys and ledger would live in SQLite on the pod's "
            "filesystem, lost when the pod is rescheduled: set `storage.postgres: true` in the k8s values "
            "(DOKA_DATABASE_URL from the Secret) or accounts.database_url to a PostgreSQL URL, or "
            "`storage.sqlite_volume_claim: <PVC name>` to keep SQLite on a persistent volume"]


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _loopback(url: str) -> bool:
    host = (urlsplit(url if "://" in url else f"//{url}").hostname or "").lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _relative_path(value: str) -> bool:
    return "://" not in value and not value.startswith("/")


def local_problems(cfg: DokaConfig) -> list[str]:
    """Targets that exist only on this machine: loopback endpoints and relative paths (a pod's
    working directory holds none of your files)."""
    problems = []
    for m in cfg.model_list:
        base = m.litellm_params.get("api_base") if m.provider == "litellm" else None
        if isinstance(base, str) and _loopback(base):
            problems.append(f"model {m.model_name!r}: litellm_params.api_base {base!r} is this machine's loopback; "
                            "in a pod it is the pod itself")
        if m.vllm is not None:
            src = m.vllm.model_source
            if src.startswith((".", "~")) or (_relative_path(src) and src.count("/") != 1):
                problems.append(f"model {m.model_name!r}: vllm.model_source {src!r} is a local path that does not "
                                "exist in a pod; use an absolute path on a volume, s3://, or a hub id")
    if cfg.router.registry and _relative_path(cfg.router.registry):
        problems.append(f"router.registry {cfg.router.registry!r} is a local path that does not exist in a pod; "
                        "use s3://... (MinIO) or an absolute path on a volume")
    if _relative_path(cfg.server.data_dir):
        problems.append(f"server.data_dir {cfg.server.data_dir!r} is relative to the pod's working directory; "
                        "use an absolute path such as /var/lib/doka")
    traces = cfg.observability.traces_url
    if traces and _relative_path(traces):
        problems.append(f"observability.traces_url {traces!r} is a local path; use s3://... or an absolute path")
    otlp = cfg.observability.otlp_endpoint
    if otlp and _loopback(otlp):
        problems.append(f"observability.otlp_endpoint {otlp!r} is this machine's loopback")
    return problems


def render_problems(cfg: DokaConfig, opts: RenderOptions) -> list[str]:
    """Everything `render_all` refuses, each naming the setting and the fix."""
    problems = moat_problems(cfg) if opts.moat else []
    problems += accounts_problems(cfg, opts)
    if not opts.allow_local:
        local = local_problems(cfg)
        if local:
            problems += local + ["(render anyway with --allow-local / `allow_local: true` if those targets do "
                                 "exist in your pods)"]
    return problems


def effective_config(cfg: DokaConfig, opts: RenderOptions) -> DokaConfig:
    """The config the cluster runs: the file, plus the PostgreSQL URL from the Secret if asked,
    or the SQLite ledger on the persistent volume."""
    if opts.storage.postgres and not cfg.accounts.database_url:
        raw = config_dict(cfg)
        raw.setdefault("accounts", {})["database_url"] = ENV_PREFIX + DATABASE_ENV
        return DokaConfig.model_validate(raw)
    if opts.storage.sqlite_volume_claim and not cfg.accounts.database_url:
        raw = config_dict(cfg)
        raw.setdefault("accounts", {})["database_url"] = f"sqlite:///{ACCOUNTS_MOUNT}/doka.db"
        return DokaConfig.model_validate(raw)
    return cfg
