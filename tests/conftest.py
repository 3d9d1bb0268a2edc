"""Shared fixtures: a real mock upstream process and a real doka Serve app, started once.

The test config is config/default.yaml adjusted (vLLM model removed, keys off, free ports),
so one config source drives `make run` and the tests.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from load.isolation import free_port, kill_haproxy, on_port, wait_http
from load.isolation import haproxy_env as isolated_haproxy_env

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "config" / "default.yaml"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MOCK_API_KEY", "mock-key")
# Behind HAProxy a draining ingress replica stays reachable this long before it closes its
# listener and waits for in-flight requests (Ray's default: 30 s, for cloud load balancers to
# deregister it). Every app a test deletes or redeploys waited that out; 2 s covers a local
# HAProxy reload (test_shutdown_drain.py proves streams still finish with it). Set here, before
# any cluster starts, so the session cluster, private heads and `doka run` children inherit it.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")


def gateway_test_config(mock_port: int, server_port: int, **overrides: Any) -> dict[str, Any]:
    """config/default.yaml without vLLM models, keys off, pointing at the given ports."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw = copy.deepcopy(raw)
    vllm = {m["model_name"] for m in raw["model_list"] if m.get("provider") == "vllm"}
    raw["model_list"] = [m for m in raw["model_list"] if m["model_name"] not in vllm]
    for m in raw["model_list"]:
        base = m.get("litellm_params", {}).get("api_base")
        if base and "127.0.0.1" in base:
            m["litellm_params"]["api_base"] = on_port(base, mock_port)
    raw["fallbacks"] = {k: [m for m in v if m not in vllm] for k, v in raw.get("fallbacks", {}).items()}
    raw["fallbacks"] = {k: v for k, v in raw["fallbacks"].items() if v}
    raw["server"].update(port=server_port, data_dir=str(REPO / ".doka" / "test"))
    raw["accounts"] = {"require_keys": False, "master_key": None}
    raw["router"].update(strategy="weighted_round_robin", registry=None)
    # small replicas: the whole graph must fit next to other test clusters on 2 cores; a deleted
    # or replaced replica re-checks for in-flight requests every 0.5 s, not Serve's 2 s
    small = {"num_cpus": 0.1, "max_ongoing_requests": 256, "graceful_shutdown_wait_loop_s": 0.5}
    raw["deployments"] = {"ingress": dict(small), "router": dict(small), "egress": dict(small)}
    for key, value in overrides.items():
        raw[key] = value
    return raw


class MockUpstream:
    """A `doka mock-upstream` process on a free port, controlled over its `/_mock/state` API."""

    def __init__(self, port: int, latency_ms: float = 5) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # its log goes to a file: a pipe nobody reads fills up with the tracebacks of injected
        # faults and then blocks the mock mid-request
        log_dir = REPO / ".doka" / "test"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(log_dir / f"mock-upstream-{port}.log", "w")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "load.mock_upstream", "--port", str(port), "--latency-ms", str(latency_ms)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"{self.url}/health", 30, log_dir / f"mock-upstream-{port}.log", poll=0.1)
        except RuntimeError:
            self.stop()
            raise

    def state(self, **patch: Any) -> dict[str, Any]:
        if patch:
            return httpx.post(f"{self.url}/_mock/state", json=patch, timeout=5).json()
        return httpx.get(f"{self.url}/_mock/state", timeout=5).json()

    def last(self, model: str) -> dict[str, Any]:
        """The last request body `model` received, as the provider saw it."""
        r = httpx.get(f"{self.url}/_mock/last/{model}", timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    def reset(self, latency_ms: float = 5) -> None:
        self.state(faults={}, latency_ms=latency_ms, chunks=8, chunk_interval_ms=0, fault_rate=1.0, answers={},
                   reset_counts=True)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[MockUpstream]:
    mock = MockUpstream(free_port())
    yield mock
    mock.stop()


def haproxy_env(tag: str) -> dict[str, str]:
    """A cluster's own HAProxy ports and files (load/isolation.py), named by tag and this session."""
    return isolated_haproxy_env(Path(f"/tmp/dkh-{tag[:4]}{os.getpid()}"))  # short: HAProxy caps socket paths


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One small local Ray cluster for the session (its own, not anyone else's)."""
    import ray

    hap = haproxy_env("session")
    os.environ.update(hap)  # inherited by the raylet and every worker it starts
    if not ray.is_initialized():
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"MOCK_API_KEY": os.environ["MOCK_API_KEY"],
                                           "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                           # no LiteLLM cooldowns: one test's faults must not leak
                                           # into the next (cooldown itself: test_gateway_egress.py)
                                           "DOKA_COOLDOWN_S": "0"}})
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    kill_haproxy(hap)


def serve_http_port(preferred: int | None = None) -> int:
    """The port of this cluster's Serve proxy, starting Serve (on `preferred` or a free port) if needed."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        port = preferred or free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        return port
    return int(client.http_config.port)


# Modules that connect to a Ray cluster of their own (ray.init / ray.shutdown): they run before
# any test that joins the session cluster, so neither tears down the other's connection.
OWN_CLUSTER_MODULES = ("test_kuberay_cluster.py", "test_training_ray.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    first = [i for i in items if i.path.name in OWN_CLUSTER_MODULES]
    items[:] = first + [i for i in items if i.path.name not in OWN_CLUSTER_MODULES]


class Gateway:
    def __init__(self, url: str, cfg: dict[str, Any]) -> None:
        self.url = url
        self.cfg = cfg

    def client(self, **kw: Any):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kw)


@pytest.fixture(scope="session")
def gateway(ray_cluster: None, mock_upstream: MockUpstream) -> Iterator[Gateway]:
    """The doka app from the test config, served once for the whole session."""
    from ray import serve

    from app.config import parse_config
    from app.graph import build_app

    port = free_port()
    raw = gateway_test_config(mock_upstream.port, port)
    # short tier timeouts so the timeout tests are quick (chain: mock-mixtral -> mock-gpt-4)
    for m in raw["model_list"]:
        if m["model_name"] == "mock-mixtral":
            m["model_info"]["timeout"] = 1  # test_gateway_fallback times how fast it is abandoned
        if m["model_name"] == "mock-gpt-4":
            m["model_info"]["timeout"] = 3
    cfg = parse_config(raw)
    # Serve's HTTP options are cluster-wide: an earlier test may have started it on another port
    port = serve_http_port(port)
    raw["server"]["port"] = port
    serve.run(build_app(cfg), name=cfg.server.app_name, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health/liveliness", 120, poll=0.25)
    yield Gateway(url, raw)
    serve.delete(cfg.server.app_name)


@pytest.fixture()
def mock(mock_upstream: MockUpstream) -> Iterator[MockUpstream]:
    """The session mock, reset to healthy before and after each test."""
    mock_upstream.reset()
    yield mock_upstream
    mock_upstream.reset()
