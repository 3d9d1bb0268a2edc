"""Render one doka config into KubeRay manifests: a RayService (the gateway), a RayJob
template (router training on the RayService's own Ray cluster), a Secret template and a
NetworkPolicy (only the gateway port reachable from outside the Ray pods).

Refused unless told otherwise (docs/security.md; the checks are in `kuberay.checks`): keys
required with the ledger in SQLite on a container filesystem (lost on reschedule), and targets
that exist only on this machine (loopback api_base, relative paths) unless `allow_local`.

The RayService's serveConfigV2 comes from `app.serve_config.serve_config`, the same
application `serve run app.graph:app_builder` starts locally. Secrets never enter a
manifest: every `os.environ/NAME` in the config becomes an env var read from the Secret.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

import yaml

from app.config import ConfigError, DokaConfig
from app.serve_config import serve_config
from kuberay.checks import (ACCOUNTS_MOUNT, effective_config, moat_problems, needed_gpus,
                            render_problems, secret_env_names)
from kuberay.options import PodSize, RenderOptions, WorkerGroupOptions

API_VERSION = "ray.io/v1"
# The RayJob runs on the RayService's active Ray cluster; `doka k8s submit-training` fills
# this in from the RayService status (KubeRay names that cluster `<name>-raycluster-<hash>`).
CLUSTER_PLACEHOLDER = "REPLACE_WITH_ACTIVE_RAYCLUSTER"
SECRET_PLACEHOLDER = "REPLACE_ME"
SERVE_PORT = 8000  # the gateway (Serve HTTP proxy): the one port open to the rest of the cluster
DASHBOARD_PORT = 8265  # Ray dashboard / jobs / Serve REST API: the KubeRay operator's door
ACCOUNTS_VOLUME = "doka-accounts"

# Env that keeps every library in a pod from calling out (moat mode).
MOAT_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "DOKA_MOAT": "1",
}

# Health checks in the style of KubeRay's own defaults: raylet + GCS on the head,
# raylet + the Serve proxy on workers (a worker without a proxy must not get traffic).
_RAYLET = "wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
_GCS = "wget -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success"
_SERVE = "wget -T 2 -q -O- http://localhost:8000/-/healthz | grep success"


# ---------------------------------------------------------------- pod pieces
def container_env(cfg: DokaConfig, opts: RenderOptions) -> list[dict[str, Any]]:
    plain: dict[str, str] = {}
    if opts.moat:
        plain.update(MOAT_ENV)
    if opts.storage.s3_endpoint:
        plain.update({
            "AWS_ENDPOINT_URL_S3": opts.storage.s3_endpoint,
            "FSSPEC_S3_ENDPOINT_URL": opts.storage.s3_endpoint,
            "AWS_REGION": opts.storage.s3_region,
        })
    plain.update(opts.extra_env)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(plain.items())]
    env += [
        {"name": n, "valueFrom": {"secretKeyRef": {"name": opts.secret, "key": n}}}
        for n in secret_env_names(cfg, opts)
    ]
    return env


def _resources(size: PodSize) -> dict[str, Any]:
    amount: dict[str, Any] = {"cpu": size.cpu, "memory": size.memory}
    if size.gpus:
        amount["nvidia.com/gpu"] = size.gpus
    return {"requests": dict(amount), "limits": dict(amount)}


def _exec_probe(command: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "exec": {"command": ["bash", "-c", command]},
        "initialDelaySeconds": 10,
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _container(name: str, cfg: DokaConfig, opts: RenderOptions, size: PodSize, *, head: bool) -> dict[str, Any]:
    health = f"{_RAYLET} && {_GCS}" if head else f"{_RAYLET} && {_SERVE}"
    c: dict[str, Any] = {
        "name": name,
        "image": opts.image,
        "imagePullPolicy": opts.image_pull_policy,
        "resources": _resources(size),
        "env": container_env(cfg, opts),
        "livenessProbe": _exec_probe(_RAYLET if not head else f"{_RAYLET} && {_GCS}", 5, 120),
        "readinessProbe": _exec_probe(health, 5, 10),
        # Let Serve drain in-flight requests before the pod goes away.
        "lifecycle": {"preStop": {"exec": {"command": ["bash", "-c", "ray stop"]}}},
    }
    if opts.storage.sqlite_volume_claim:
        c["volumeMounts"] = [{"name": ACCOUNTS_VOLUME, "mountPath": ACCOUNTS_MOUNT}]
    if head:
        c["ports"] = [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
            {"containerPort": 8000, "name": "serve"},
        ]
    return c


def _pod_spec(container: dict[str, Any], opts: RenderOptions, group: WorkerGroupOptions | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if opts.storage.sqlite_volume_claim:
        spec["volumes"] = [{"name": ACCOUNTS_VOLUME,
                            "persistentVolumeClaim": {"claimName": opts.storage.sqlite_volume_claim}}]
    if group is not None:
        if group.node_selector:
            spec["nodeSelector"] = dict(group.node_selector)
        if group.tolerations:
            spec["tolerations"] = [dict(t) for t in group.tolerations]
    # Serve's graceful shutdown (20 s by default) must fit in the pod's grace period.
    spec["terminationGracePeriodSeconds"] = 60
    return spec


def _labels(opts: RenderOptions, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "doka", "app.kubernetes.io/instance": opts.name,
            "app.kubernetes.io/component": component}


def _worker_group(cfg: DokaConfig, opts: RenderOptions, group: WorkerGroupOptions, max_replicas: int) -> dict[str, Any]:
    replicas = group.replicas if group.replicas is not None else group.min_replicas
    return {
        "groupName": group.name,
        "replicas": min(replicas, max_replicas),
        "minReplicas": min(group.min_replicas, max_replicas),
        "maxReplicas": max_replicas,
        "rayStartParams": {},
        "template": {
            "metadata": {"labels": _labels(opts, f"ray-worker-{group.name}")},
            "spec": _pod_spec(_container("ray-worker", cfg, opts, group.size, head=False), opts, group),
        },
    }


def ray_cluster_spec(cfg: DokaConfig, opts: RenderOptions) -> dict[str, Any]:
    """Head (no Serve replicas: num-cpus 0) + autoscaled CPU group + GPU group when needed."""
    groups = [_worker_group(cfg, opts, opts.cpu_workers, opts.cpu_workers.max_replicas or 4)]
    gpus = needed_gpus(cfg)
    if opts.gpu == "on" or (opts.gpu == "auto" and gpus > 0):
        per_node = max(opts.gpu_workers.size.gpus, 1)
        max_nodes = opts.gpu_workers.max_replicas or max(math.ceil(gpus / per_node), 1)
        groups.append(_worker_group(cfg, opts, opts.gpu_workers, max_nodes))
    return {
        "rayVersion": opts.ray_version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": opts.upscaling_mode,
            "idleTimeoutSeconds": opts.autoscaler_idle_timeout_s,
        },
        "headGroupSpec": {
            # dashboard-host 0.0.0.0: the KubeRay operator reaches it; networkpolicy.yaml admits only
            # the operator there, and the head Service stays ClusterIP (never LoadBalancer/NodePort)
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "serviceType": "ClusterIP",
            "template": {
                "metadata": {"labels": _labels(opts, "ray-head")},
                "spec": _pod_spec(_container("ray-head", cfg, opts, opts.head, head=True), opts),
            },
        },
        "workerGroupSpecs": groups,
    }


def _metadata(opts: RenderOptions, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": opts.namespace, "labels": _labels(opts, component)}


# ---------------------------------------------------------------- manifests
def rayservice(cfg: DokaConfig, opts: RenderOptions) -> dict[str, Any]:
    run_cfg = effective_config(cfg, opts)
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(opts, opts.name, "gateway"),
        "spec": {
            "serveConfigV2": dump_yaml(serve_config(run_cfg, inline=True)),
            # A change to rayClusterConfig starts a new cluster and moves traffic when it is
            # ready; a change to serveConfigV2 alone is applied in place.
            "upgradeStrategy": {"type": "NewCluster"},
            "deploymentUnhealthySecondThreshold": 300,
            "serviceUnhealthySecondThreshold": 900,
            "rayClusterConfig": ray_cluster_spec(cfg, opts),
        },
    }


def training_entrypoint(opts: RenderOptions) -> str:
    t = opts.training
    argv = ["python", "-m", "kuberay.train_job", "--family", t.family, "--data", t.data, "--registry", t.registry]
    argv += [x for p in t.params for x in ("--param", p)] + (["--ray"] if t.use_ray_data else [])
    return shlex.join(argv)


def rayjob(cfg: DokaConfig, opts: RenderOptions, *, cluster: str = CLUSTER_PLACEHOLDER,
           name: str | None = None) -> dict[str, Any]:
    """Router training as a Ray job on the gateway's own Ray cluster (no second cluster)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(opts, name or f"{opts.name}-train", "training"),
        "spec": {
            "entrypoint": training_entrypoint(opts),
            "clusterSelector": {"ray.io/cluster": cluster},
            "entrypointNumCpus": opts.training.entrypoint_num_cpus,
            "runtimeEnvYAML": dump_yaml({"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}),
            "activeDeadlineSeconds": opts.training.active_deadline_s,
            "submitterPodTemplate": {
                "metadata": {"labels": _labels(opts, "training-submitter")},  # inside the NetworkPolicy
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "ray-job-submitter",
                        "image": opts.image,
                        "imagePullPolicy": opts.image_pull_policy,
                        "resources": _resources(PodSize(cpu="500m", memory="512Mi")),
                    }],
                }
            },
        },
    }


def secret(cfg: DokaConfig, opts: RenderOptions) -> dict[str, Any]:
    """Template: fill in the values (or create the Secret from your vault), never commit them."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(opts, opts.secret, "secrets"),
        "type": "Opaque",
        "stringData": {n: SECRET_PLACEHOLDER for n in secret_env_names(cfg, opts)},
    }


def _pods_of(opts: RenderOptions) -> dict[str, Any]:
    """Every pod this render makes (head, workers, the RayJob submitter) carries these labels."""
    return {"matchLabels": {"app.kubernetes.io/name": "doka", "app.kubernetes.io/instance": opts.name}}


def network_policy(cfg: DokaConfig, opts: RenderOptions) -> dict[str, Any]:
    """Ingress to the Ray pods: anything from the cluster's own pods; from elsewhere only the gateway
    port, plus the dashboard port from the KubeRay operator. GCS (6379), the Ray client (10001),
    the dashboard and the metrics/agent ports stay closed to neighbours (a Ray job is code execution
    with the provider keys in its environment)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(opts, f"{opts.name}-ray", "network-policy"),
        "spec": {
            "podSelector": _pods_of(opts),
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": _pods_of(opts)}]},
                {"ports": [{"protocol": "TCP", "port": SERVE_PORT}]},
                {"from": [{"namespaceSelector": {"matchLabels": {
                              "kubernetes.io/metadata.name": opts.kuberay_operator_namespace}},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}],
                 "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
            ],
        },
    }


def render_all(cfg: DokaConfig, opts: RenderOptions) -> dict[str, dict[str, Any]]:
    """File name -> manifest. Raises ConfigError (every problem, each with its fix) for a config the
    cluster must not run: moat violations, keys without a durable ledger, local-only targets."""
    problems = render_problems(cfg, opts)
    if problems:
        what = "moat mode refuses this config" if opts.moat and moat_problems(cfg) else "k8s render refuses this config"
        raise ConfigError(f"{what}:\n  " + "\n  ".join(problems))
    out = {
        "rayservice.yaml": rayservice(cfg, opts),
        "rayjob-train.yaml": rayjob(cfg, opts),
        "secret.yaml": secret(cfg, opts),
    }
    if opts.network_policy:
        out["networkpolicy.yaml"] = network_policy(cfg, opts)
    return out


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings (serveConfigV2) as `|` literals for readable diffs."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


HEADER = "# Generated by `doka k8s render`; do not edit by hand (tests keep it in sync).\n"


def render_files(cfg: DokaConfig, opts: RenderOptions) -> dict[str, str]:
    return {name: HEADER + dump_yaml(obj) for name, obj in render_all(cfg, opts).items()}
