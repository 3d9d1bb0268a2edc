"""Cluster-side settings for `doka k8s render`: what the doka config cannot know (image,
namespace, node pools, storage endpoints). Read from an optional values YAML plus CLI flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from app.config_base import ConfigError, StrictModel


class PodSize(StrictModel):
    """Container requests = limits (Ray sizes itself from the limits)."""

    cpu: str = "2"
    memory: str = "8Gi"
    gpus: int = Field(0, ge=0)


class WorkerGroupOptions(StrictModel):
    name: str
    size: PodSize
    min_replicas: int = Field(0, ge=0)
    max_replicas: int | None = Field(None, ge=1, description="None: computed from the config")
    replicas: int | None = Field(None, ge=0, description="initial count; default min_replicas")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


def _cpu_group() -> WorkerGroupOptions:
    return WorkerGroupOptions(name="cpu", size=PodSize(cpu="4", memory="16Gi"), min_replicas=1, max_replicas=4)


def _gpu_group() -> WorkerGroupOptions:
    return WorkerGroupOptions(
        name="gpu",
        size=PodSize(cpu="8", memory="48Gi", gpus=1),
        min_replicas=0,
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )


class StorageOptions(StrictModel):
    """Optional PostgreSQL (accounts ledger) and MinIO/S3 (artifact registry, datasets, traces)."""

    postgres: bool = Field(False, description="pods get DOKA_DATABASE_URL from the Secret")
    s3_endpoint: str | None = Field(None, description="MinIO/S3 endpoint URL, e.g. http://minio.storage:9000")
    s3_region: str = "us-east-1"
    sqlite_volume_claim: str | None = Field(
        None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="an existing PersistentVolumeClaim "
        "that keeps the SQLite ledger when PostgreSQL is not used (mounted on every Ray pod at "
        "/var/lib/doka-accounts: ReadWriteMany, or a single CPU worker). PostgreSQL is the production choice")


class TrainingOptions(StrictModel):
    """The router-training RayJob (`python -m kuberay.train_job`): dataset and registry are URLs
    the head pod can reach (s3:// on MinIO); the job publishes and moves `latest`."""

    family: str = "knn"
    data: str = "s3://doka/datasets/routerbench-train.jsonl"
    registry: str = "s3://doka/registry"
    params: list[str] = Field(default_factory=list, description="family hyperparameters, NAME=VALUE")
    use_ray_data: bool = Field(False, description="embed with Ray Data across the cluster")
    entrypoint_num_cpus: float = Field(1.0, ge=0)
    active_deadline_s: int = Field(3600, ge=1)


class RenderOptions(StrictModel):
    name: str = Field("doka", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    namespace: str = "default"
    image: str = "ghcr.io/doka-gateway/doka:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    ray_version: str = "2.60.0"
    secret_name: str | None = Field(None, description="default: <name>-secrets")
    head: PodSize = Field(default_factory=PodSize)
    cpu_workers: WorkerGroupOptions = Field(default_factory=_cpu_group)
    gpu_workers: WorkerGroupOptions = Field(default_factory=_gpu_group)
    gpu: Literal["auto", "on", "off"] = Field("auto", description="auto: a GPU group when the config needs GPUs")
    autoscaler_idle_timeout_s: int = Field(60, ge=0)
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"] = "Default"
    storage: StorageOptions = Field(default_factory=StorageOptions)
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    moat: bool = Field(False, description="air-gapped: no outbound calls, signed artifacts, internal endpoints only")
    allow_local: bool = Field(False, description="render a config whose targets are loopback addresses "
                              "(127.0.0.1, localhost) or relative local paths, which do not exist in a pod")
    network_policy: bool = Field(True, description="render networkpolicy.yaml: only the gateway port is "
                                 "reachable from outside the Ray pods (docs/security.md)")
    kuberay_operator_namespace: str = Field(
        "kuberay-system", description="namespace of the KubeRay operator (the helm command in "
        "docs/kubernetes.md installs it there), which alone may reach the Ray "
        "dashboard port (it deploys serveConfigV2 and submits RayJobs through it)")
    extra_env: dict[str, str] = Field(default_factory=dict)

    @property
    def secret(self) -> str:
        return self.secret_name or f"{self.name}-secrets"


def load_options(path: str | Path | None = None, **overrides: Any) -> RenderOptions:
    """Values file (optional) then CLI overrides (None means not given)."""
    raw: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"values file {p} not found") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"values file {p}: top level must be a mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RenderOptions.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path or '<options>'}: invalid k8s values"]
        lines += [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ConfigError("\n".join(lines)) from e
