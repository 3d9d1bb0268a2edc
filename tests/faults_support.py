"""Helpers for the fault tests: a keys-on doka app beside the session gateway, ledger reads, replica pids.

Each fault module deploys its own app under its own route prefix on the session's Serve
instance (like tests/test_accounts_gateway.py), so the session gateway is never disturbed.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from typing import Any, Iterator

import httpx

from tests.conftest import free_port, gateway_test_config, serve_http_port, wait_http

MASTER = "sk-master-faults"
LEASE_S = 4.0  # a killed ingress's open reservations are closed (and logged) this long after it went silent


class App:
    """A deployed doka app: its URL, config and name."""

    def __init__(self, name: str, url: str, raw: dict[str, Any]) -> None:
        self.name, self.url, self.raw = name, url, raw

    # ---- accounts admin API (master key) ----
    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=60, **kw)

    def new_key(self, **limits: Any) -> dict[str, Any]:
        r = self.admin("POST", "/key/generate", json=limits)
        assert r.status_code == 200, r.text
        return r.json()

    def ledger(self, key_id: str) -> list[dict[str, Any]]:
        r = self.admin("GET", "/spend/logs", params={"key_id": key_id, "limit": 100_000})
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def openai(self, key: dict[str, Any], timeout: float = 30) -> Any:
        """The unmodified OpenAI SDK on this app with a key from `new_key` (no SDK retries)."""
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key["key"], max_retries=0, timeout=timeout)

    def ledger_ids(self, key_id: str) -> set[str]:
        return {row["request_id"] for row in self.ledger(key_id)}

    def inflight(self, key_id: str) -> int:
        r = self.admin("GET", "/key/info", params={"key_id": key_id})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["inflight"]

    def wait_no_holds(self, key_id: str, timeout: float = 4 * LEASE_S) -> int:
        """Wait until the key holds no open reservation (a lost replica's close after LEASE_S); the count left."""
        deadline = time.time() + timeout
        while (left := self.inflight(key_id)) and time.time() < deadline:
            time.sleep(0.5)
        return left


def deploy_app(name: str, prefix: str, mock_port: int, data_dir: str, *, keys: bool = True,
               database_url: str | None = None, tweak: Any = None) -> App:
    """Deploy the test config (keys on, short tier timeouts) as app `name` under `prefix`."""
    from ray import serve

    from app.config import parse_config
    from app.graph import build_app

    raw = gateway_test_config(mock_port, free_port())
    raw["server"].update(data_dir=data_dir, app_name=name, route_prefix=prefix)
    if keys:
        raw["accounts"] = {"require_keys": True, "master_key": MASTER, "settle_interval_s": 0.2,
                           "reservation_lease_s": LEASE_S,
                           **({"database_url": database_url} if database_url else {})}
    for m in raw["model_list"]:  # short tiers: a timed-out first tier costs 1 s, not 30
        m["model_info"]["timeout"] = 1.0 if m["model_name"] == "mock-mixtral" else 5.0
    if tweak is not None:
        tweak(raw)
    cfg = parse_config(raw)
    port = serve_http_port()
    serve.run(build_app(cfg), name=name, route_prefix=prefix)
    url = f"http://127.0.0.1:{port}{prefix}"
    wait_ok(f"{url}/health/liveliness", 120)
    return App(name, url, raw)


def deployed_app(name: str, prefix: str, mock_port: int, data_dir: str, **kw: Any) -> Iterator[App]:
    """Body of a module fixture: `deploy_app`, yield it, delete it after the module."""
    from ray import serve

    app = deploy_app(name, prefix, mock_port, data_dir, **kw)
    yield app
    serve.delete(app.name)


wait_ok = functools.partial(wait_http, poll=0.25)  # the fault tests' name for it


def replica_pids(app: str, deployment: str) -> list[int]:
    """OS pids of the RUNNING replicas of one deployment, from the Serve controller.

    (Serve's own details, not Ray's state API: that needs the dashboard, which the test
    session's cluster does not start.)
    """
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    dep = (details.get("applications", {}).get(app) or {}).get("deployments", {}).get(deployment) or {}
    return [r["pid"] for r in dep.get("replicas", []) if r.get("state") == "RUNNING" and r.get("pid")]


def kill_replica(app: str, deployment: str) -> int:
    """SIGKILL one replica process of `deployment`; Serve's controller must replace it."""
    pids = replica_pids(app, deployment)
    assert pids, f"no live replica of {app}/{deployment}"
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def wait_replaced(app: str, deployment: str, old_pid: int, timeout: float = 120) -> float:
    """Seconds until a replica other than `old_pid` is alive."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(p != old_pid for p in replica_pids(app, deployment)):
            return time.time() - t0
        time.sleep(0.25)
    raise TimeoutError(f"{app}/{deployment} not replaced within {timeout}s")


def openai_error_shape(body: Any) -> bool:
    return (isinstance(body, dict) and isinstance(body.get("error"), dict)
            and {"message", "type", "param", "code"} <= set(body["error"])
            and isinstance(body["error"]["message"], str) and bool(body["error"]["message"]))
