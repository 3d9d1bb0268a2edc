"""The few KubeRay operations doka needs, over the official `kubernetes` client
(CustomObjectsApi): apply the RayService, submit and follow a training RayJob, and reload
the router by patching only the router's user_config inside serveConfigV2.

A serveConfigV2-only change is applied by KubeRay in place on the running cluster (Serve
then calls the router's `reconfigure`), so a reload never starts a new Ray cluster.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from app.config import RouterConfig
from app.placement import DEPLOYMENT_NAMES, router_home_for
from kuberay.render import CLUSTER_PLACEHOLDER, dump_yaml

GROUP, VERSION = "ray.io", "v1"
RAYSERVICES, RAYJOBS = "rayservices", "rayjobs"
MERGE_PATCH = "application/merge-patch+json"
ROUTER_DEPLOYMENT = DEPLOYMENT_NAMES["router"]
# RayJob states after which nothing more happens.
JOB_DONE = {"SUCCEEDED", "FAILED", "STOPPED"}
DEPLOYMENT_DONE = {"Complete", "Failed"}


class KubeRayError(RuntimeError):
    """A KubeRay object is missing, not ready, or in a shape doka cannot work with."""


def api_client(kubeconfig: str | None = None, context: str | None = None,
               in_cluster: bool | None = None) -> k8s.ApiClient:
    """In-cluster config when asked (or when running in a pod without a kubeconfig), else kubeconfig."""
    if in_cluster is None:
        in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ and not os.environ.get("KUBECONFIG")
    if in_cluster:
        conf = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=conf)
        return k8s.ApiClient(conf)
    return k8s_config.new_client_from_config(config_file=kubeconfig, context=context)


@dataclass
class JobResult:
    name: str
    job_status: str | None
    deployment_status: str | None
    message: str | None

    @property
    def succeeded(self) -> bool:
        return self.job_status == "SUCCEEDED"


class KubeRay:
    """RayService / RayJob operations in one namespace."""

    def __init__(self, api: k8s.ApiClient, namespace: str = "default") -> None:
        self.api = k8s.CustomObjectsApi(api)
        self.namespace = namespace

    # ------------------------------------------------------------ RayService
    def get_rayservice(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, RAYSERVICES, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def apply_rayservice(self, manifest: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Create, or replace the spec of, a RayService; returns ("created"|"updated", object).

        Replace (PUT with the current resourceVersion) rather than merge-patch, so fields removed
        from the config are removed from the cluster, and a concurrent edit fails loudly (409).
        """
        name = manifest["metadata"]["name"]
        current = self.get_rayservice(name)
        if current is None:
            obj = self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, RAYSERVICES, manifest)
            return "created", obj
        body = copy.deepcopy(manifest)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        obj = self.api.replace_namespaced_custom_object(GROUP, VERSION, self.namespace, RAYSERVICES, name, body)
        return "updated", obj

    def active_cluster(self, name: str) -> str:
        svc = self.get_rayservice(name)
        if svc is None:
            raise KubeRayError(f"RayService {self.namespace}/{name} not found")
        cluster = (svc.get("status") or {}).get("activeServiceStatus", {}).get("rayClusterName")
        if not cluster:
            raise KubeRayError(f"RayService {self.namespace}/{name} has no active Ray cluster yet")
        return cluster

    def reload_router(self, name: str, *, artifact: str | None = None, registry: str | None = None,
                      app_name: str | None = None, attempts: int = 5) -> dict[str, Any]:
        """Merge-patch serveConfigV2 with the router's user_config changed; returns that user_config.

        Optimistic concurrency: the patch carries the resourceVersion it was computed from, so
        the API server refuses it (409) if the RayService changed since the read; then it is
        read and computed again (up to `attempts` times), so a concurrent edit is never lost.
        """
        for attempt in range(attempts):
            svc = self.get_rayservice(name)
            if svc is None:
                raise KubeRayError(f"RayService {self.namespace}/{name} not found")
            serve_cfg = yaml.safe_load(svc["spec"].get("serveConfigV2") or "") or {}
            new_cfg, user_config = with_router_user_config(serve_cfg, artifact=artifact, registry=registry,
                                                           app_name=app_name)
            patch = {"metadata": {"resourceVersion": svc["metadata"]["resourceVersion"]},
                     "spec": {"serveConfigV2": dump_yaml(new_cfg)}}
            try:
                self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, RAYSERVICES, name, patch,
                                                        _content_type=MERGE_PATCH)
                return user_config
            except ApiException as e:
                if e.status != 409 or attempt == attempts - 1:
                    raise
                time.sleep(min(0.1 * 2 ** attempt, 1.0))  # someone else wrote it: read it again
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ RayJob
    def submit_rayjob(self, manifest: dict[str, Any], *, rayservice: str | None = None) -> dict[str, Any]:
        """Create the RayJob; a placeholder clusterSelector is pointed at the RayService's active cluster."""
        body = copy.deepcopy(manifest)
        selector = body["spec"].get("clusterSelector") or {}
        if selector.get("ray.io/cluster") == CLUSTER_PLACEHOLDER:
            if not rayservice:
                raise KubeRayError("the RayJob template needs a RayService to run on")
            selector["ray.io/cluster"] = self.active_cluster(rayservice)
        return self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, RAYJOBS, body)

    def get_rayjob(self, name: str) -> dict[str, Any]:
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, RAYJOBS, name)

    def follow_rayjob(self, name: str, *, timeout_s: float = 3600,
                      on_event: Callable[[JobResult], None] | None = None) -> JobResult:
        """Watch the RayJob until its job ends (or its deployment fails); returns the last state."""
        deadline = time.monotonic() + timeout_s
        last = JobResult(name, None, None, None)
        while time.monotonic() < deadline:
            for obj in self._watch_job(name, int(max(1, deadline - time.monotonic()))):
                last = _job_result(obj)
                if on_event:
                    on_event(last)
                if last.job_status in JOB_DONE or last.deployment_status in DEPLOYMENT_DONE:
                    return last
        raise KubeRayError(f"RayJob {self.namespace}/{name} did not finish in {timeout_s:.0f}s "
                           f"(last: {last.job_status or last.deployment_status})")

    def _watch_job(self, name: str, timeout_s: int) -> Iterator[dict[str, Any]]:
        w = k8s_watch.Watch()
        try:
            for event in w.stream(self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, RAYJOBS,
                                  field_selector=f"metadata.name={name}", timeout_seconds=timeout_s):
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield event["object"]
                elif event["type"] == "DELETED":
                    raise KubeRayError(f"RayJob {self.namespace}/{name} was deleted")
        finally:
            w.stop()

    # ------------------------------------------------------------ status
    def status(self, name: str) -> dict[str, Any]:
        """A short summary of the RayService (and the serve applications KubeRay reports)."""
        svc = self.get_rayservice(name)
        if svc is None:
            raise KubeRayError(f"RayService {self.namespace}/{name} not found")
        st = svc.get("status") or {}
        active = st.get("activeServiceStatus") or {}
        apps = {app: s.get("status") for app, s in (active.get("applicationStatuses") or {}).items()}
        ready = next((c.get("status") for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
        return {
            "name": name,
            "namespace": self.namespace,
            "serviceStatus": st.get("serviceStatus"),
            "ready": ready,
            "activeCluster": active.get("rayClusterName"),
            "pendingCluster": (st.get("pendingServiceStatus") or {}).get("rayClusterName"),
            "applications": apps,
            "router_user_config": _router_user_config(svc),
        }


def _job_result(obj: dict[str, Any]) -> JobResult:
    st = obj.get("status") or {}
    return JobResult(obj["metadata"]["name"], st.get("jobStatus"), st.get("jobDeploymentStatus"), st.get("message"))


def _find_router(serve_cfg: dict[str, Any], app_name: str | None) -> dict[str, Any]:
    apps = serve_cfg.get("applications") or []
    if app_name is not None:
        apps = [a for a in apps if a.get("name") == app_name]
    if not apps:
        raise KubeRayError(f"serveConfigV2 has no application {app_name or ''}".strip())
    app = apps[0]
    deps = app.setdefault("deployments", [])
    # a Router entry means the graph has that deployment; else the inline config's placement
    # (a `config_path` app: the config's default) says which deployment holds the router
    placement = (((app.get("args") or {}).get("config") or {}).get("router") or {}).get(
        "placement", RouterConfig.model_fields["placement"].default)
    names = [d.get("name") for d in deps]
    owner = ROUTER_DEPLOYMENT if ROUTER_DEPLOYMENT in names else router_home_for(placement)
    for dep in deps:
        if dep.get("name") == owner:
            return dep
    dep = {"name": owner}
    deps.append(dep)
    return dep


def with_router_user_config(serve_cfg: dict[str, Any], *, artifact: str | None, registry: str | None,
                            app_name: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of a Serve config with the router deployment's user_config updated."""
    if artifact is None and registry is None:
        raise ValueError("reload needs an artifact version and/or a registry")
    new_cfg = copy.deepcopy(serve_cfg)
    dep = _find_router(new_cfg, app_name)
    user_config = dict(dep.get("user_config") or {})
    if artifact is not None:
        from router.versions import check_version

        user_config["artifact"] = check_version(artifact)  # before the cluster sees it
    if registry is not None:
        user_config["registry"] = registry
    dep["user_config"] = user_config
    return new_cfg, user_config


def _router_user_config(svc: dict[str, Any]) -> dict[str, Any] | None:
    try:
        cfg = yaml.safe_load(svc["spec"].get("serveConfigV2") or "") or {}
        return _find_router(cfg, None).get("user_config")
    except (KubeRayError, KeyError, yaml.YAMLError):
        return None
