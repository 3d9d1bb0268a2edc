"""On a real local Ray cluster (a private `ray start --head`, standing in for the RayService's
head pod): the serveConfigV2 embedded in the RayService is the same application that
`serve.run(app_builder(...))` starts locally, and the RayJob's training entry point runs
for real through `ray job submit`, exactly as KubeRay's submitter runs it.

The head runs on free ports in its own temp dir and process group and is stopped by that
group id only (never `ray stop`, which would hit other clusters on the machine).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.config import load_config, parse_config
from kuberay.options import load_options
from kuberay.render import rayjob, rayservice
from tests.conftest import free_port, haproxy_env, kill_haproxy

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "config" / "default.yaml"


@dataclass
class LocalHead:
    proc: subprocess.Popen
    gcs_address: str
    dashboard_url: str
    http_port: int
    env: dict[str, str]
    temp_dir: Path

    def log_tail(self) -> str:
        return (self.temp_dir / "ray-start.log").read_text()[-2000:]

    def stop(self) -> None:
        """SIGTERM our own process group (ray start and everything it spawned), then SIGKILL once
        the GCS and raylet have shut down or 10 s passed: `ray start --block` itself never exits
        on SIGTERM, and a raylet with workers left takes longer still, so waiting for `ray start`
        (the old way) always ran out a 30 s bound before the SIGKILL that ends it anyway."""
        kill_haproxy(self.env)  # Serve starts HAProxy in a session of its own
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            return
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline and _group_runs(pgid, {"gcs_server", "raylet"}):
            time.sleep(0.2)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def _group_runs(pgid: int, names: set[str]) -> bool:
    """Whether a live (not zombie) process of process group `pgid` has one of `names`."""
    import psutil

    for p in psutil.process_iter(["name", "status"]):
        try:
            if p.info["name"] in names and p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def start_head(num_cpus: int = 6, extra_env: dict[str, str] | None = None) -> LocalHead:
    temp_dir = Path(tempfile.mkdtemp(prefix="dkray"))
    bin_dir = temp_dir / "bin"
    bin_dir.mkdir()
    # The image has the `doka` console script; here it is a shim over this checkout.
    shim = bin_dir / "doka"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m app.cli \"$@\"\n")
    shim.chmod(0o755)
    gcs, dash, client = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **haproxy_env("kuberay"),
        **(extra_env or {}),
    }
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
        f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
        "--include-dashboard=true", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--num-cpus={num_cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    log = open(temp_dir / "ray-start.log", "w")  # noqa: SIM115 - lives as long as the head
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = LocalHead(proc, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", free_port(), env, temp_dir)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited: {(temp_dir / 'ray-start.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{head.dashboard_url}/api/version", timeout=2).status_code == 200:
                return head
        except httpx.HTTPError:
            pass
        time.sleep(1)
    head.stop()
    raise RuntimeError("local Ray head did not come up in 180 s")


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def head():
    h = start_head(num_cpus=8, extra_env={
        "MOCK_API_KEY": "mock-key", "DOKA_MASTER_KEY": "sk-master-test", "DOKA_SIGNING_KEY": "kuberay-test-key"})
    yield h
    h.stop()


def _apps(head: LocalHead) -> dict[str, Any]:
    r = httpx.get(f"{head.dashboard_url}/api/serve/applications/", timeout=10)
    r.raise_for_status()
    return r.json().get("applications") or {}


def _wait_running(head: LocalHead, name: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    app: dict[str, Any] = {}
    while time.monotonic() < deadline:
        app = _apps(head).get(name) or {}
        if app.get("status") == "RUNNING":
            return app
        if app.get("status") == "DEPLOY_FAILED":
            raise AssertionError(f"{name} failed: {app.get('message')}")
        time.sleep(0.5)
    raise AssertionError(f"{name} not RUNNING after {timeout_s}s: {app.get('status')} {app.get('message')}")


def _wait_deleted(head: LocalHead, name: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while name in _apps(head):
        assert time.monotonic() < deadline, f"{name} was not deleted"
        time.sleep(0.5)


def _shape(app: dict[str, Any]) -> dict[str, Any]:
    """What must be equal between the two runs: route, deployments, their status and options."""
    return {
        "route_prefix": app["route_prefix"],
        "deployments": {name: {"status": d["status"], "config": d["deployment_config"]}
                        for name, d in app["deployments"].items()},
    }


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """The paths where two nested dicts differ, for a readable assertion message."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _models(head: LocalHead) -> list[str]:
    r = httpx.get(f"http://127.0.0.1:{head.http_port}/v1/models",
                  headers={"Authorization": "Bearer sk-master-test"}, timeout=30)
    assert r.status_code == 200, r.text
    return sorted(m["id"] for m in r.json()["data"])


def _test_config(tmp_path: Path) -> Path:
    """The default config without the vLLM model (no engine on this machine), state in tmp."""
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["model_list"] = [m for m in raw["model_list"] if m.get("provider") != "vllm"]
    raw["fallbacks"] = {"default": ["mock-mixtral", "mock-gpt-4"]}
    raw["server"]["data_dir"] = str(tmp_path / "data")
    raw["router"]["registry"] = str(tmp_path / "registry")
    raw["accounts"]["require_keys"] = False
    path = tmp_path / "doka.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_serve_config_v2_is_the_app_serve_run_starts(head, tmp_path, monkeypatch):
    import ray
    from ray import serve

    from app.graph import app_builder

    cfg_path = _test_config(tmp_path)
    cfg = load_config(cfg_path)
    name = cfg.server.app_name

    # 1. locally, the way `serve run app.graph:app_builder config_path=...` does it
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for attempt in range(3):  # a loaded machine can time out the first GCS handshake
        assert head.proc.poll() is None, f"the private Ray head exited: {head.log_tail()}"
        try:
            ray.init(address=head.gcs_address, log_to_driver=False)
            break
        except (RuntimeError, ConnectionError):
            ray.shutdown()
            if attempt == 2:
                raise
            time.sleep(10)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": head.http_port})
        serve.run(app_builder({"config_path": str(cfg_path)}), name=name, route_prefix=cfg.server.route_prefix)
        local = _wait_running(head, name)
        local_models = _models(head)
        serve.delete(name)
        _wait_deleted(head, name)
    finally:
        from ray.serve.context import _disconnect

        _disconnect()  # forget this head's Serve controller: later tests use the session cluster's
        ray.shutdown()

    # 2. the RayService's serveConfigV2, deployed the way KubeRay does (the dashboard's Serve REST API)
    manifest = rayservice(cfg, load_options())
    serve_file = tmp_path / "serve_config_v2.yaml"
    serve_file.write_text(manifest["spec"]["serveConfigV2"])
    deployed = yaml.safe_load(serve_file.read_text())["applications"][0]
    assert parse_config(deployed["args"]["config"]) == cfg  # inline config == the file
    subprocess.run([str(Path(sys.executable).parent / "serve"), "deploy", str(serve_file),
                    "--address", head.dashboard_url], env=head.env, check=True, capture_output=True, timeout=120)
    remote = _wait_running(head, name)
    remote_models = _models(head)

    # config/default.yaml decides `auto` and calls providers inside the ingress (router.placement,
    # egress.placement): no Router or Egress deployment, and the ingress carries the router
    # user_config on both paths
    assert "Ingress" in local["deployments"] and not {"Router", "Egress"} & set(local["deployments"])
    assert _shape(remote) == _shape(local), _diff(_shape(remote), _shape(local))
    assert remote_models == local_models and "mock-gpt-4" in local_models
    for deployment in (remote, local):
        ingress = deployment["deployments"]["Ingress"]["deployment_config"]
        assert ingress["user_config"] == {"strategy": "learned", "artifact": "latest",
                                          "registry": str(tmp_path / "registry")}

    subprocess.run([str(Path(sys.executable).parent / "serve"), "shutdown", "-y", "--address", head.dashboard_url],
                   env=head.env, check=False, capture_output=True, timeout=120)


def _tiny_dataset(path: Path, n: int = 40) -> Path:
    topics = ["add two numbers", "write a poem about the sea", "prove a lemma", "sort a list", "name a capital"]
    with path.open("w") as f:
        for i in range(n):
            hard = i % 5 == 2
            f.write(json.dumps({
                "id": f"r{i}",
                "prompt": f"{topics[i % 5]} #{i}",
                "scores": {"small-model": 0.0 if hard else 1.0, "big-model": 1.0},
                "costs": {"small-model": 0.0001, "big-model": 0.003},
            }) + "\n")
    return path


def test_training_rayjob_entrypoint_runs_as_a_ray_job(head, tmp_path):
    from router.artifact import verify_signature
    from router.registry import Registry

    data, registry = _tiny_dataset(tmp_path / "train.jsonl"), tmp_path / "registry"
    opts = load_options(training={"family": "knn", "data": f"file://{data}", "registry": str(registry)})
    spec = rayjob(load_config(DEFAULT), opts)["spec"]
    assert shlex.split(spec["entrypoint"])[:3] == ["python", "-m", "kuberay.train_job"]

    # What KubeRay's submitter pod runs for this RayJob.
    submission_id = f"doka-train-{int(time.time())}"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.dashboard_url,
         "--submission-id", submission_id,
         "--runtime-env-json", json.dumps(yaml.safe_load(spec["runtimeEnvYAML"])),
         "--entrypoint-num-cpus", str(spec["entrypointNumCpus"]),
         "--", *shlex.split(spec["entrypoint"])],  # the submitter's shell splits it the same way
        env=head.env, cwd=tmp_path, capture_output=True, text=True, timeout=540,
    )
    info = httpx.get(f"{head.dashboard_url}/api/jobs/{submission_id}", timeout=10).json()
    logs = httpx.get(f"{head.dashboard_url}/api/jobs/{submission_id}/logs", timeout=10).json().get("logs", "")
    assert info["status"] == "SUCCEEDED", f"{info.get('message')}\n{logs[-3000:]}\n{proc.stdout[-2000:]}"
    assert proc.returncode == 0

    # the job published a signed artifact and moved `latest` to it
    reg = Registry(str(registry))
    version = reg.latest_version()
    assert version and f'"version": "{version}"' in logs
    meta = verify_signature(reg.resolve(version, "kuberay-test-key"), "kuberay-test-key")
    assert meta["family"] == "knn" and sorted(meta["labels"]) == ["big-model", "small-model"]
