"""A test module's own doka app with keys on (SQLite under a temp dir), beside the session's
keys-off gateway on the same Serve proxy under its own route prefix; and the master-key calls
the tests make on it (admin API, new keys)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from tests.conftest import MockUpstream, free_port, gateway_test_config, serve_http_port, wait_http


@dataclass
class KeyedGateway:
    url: str
    cfg: Any  # app.config.DokaConfig
    mock: MockUpstream
    master: str
    app: str
    prefix: str

    def deploy(self) -> None:
        """(Re)deploy the app; returns once it answers."""
        from ray import serve

        from app.graph import build_apps

        apps = build_apps(self.cfg)  # the gateway, and each vLLM tier as its own application
        gateway = apps.pop(self.cfg.server.app_name)
        for name, tier in apps.items():
            serve.run(tier, name=name, route_prefix=None)
        serve.run(gateway, name=self.app, route_prefix=self.prefix)
        wait_http(f"{self.url}/health/liveliness", 60, poll=0.25)

    def delete(self) -> None:
        from ray import serve

        from deployments.tier_apps import tier_apps

        for name in [self.app, *(w["app"] for w in tier_apps(self.cfg).values())]:
            if name in serve.status().applications:
                serve.delete(name)


def keyed_gateway(mock: MockUpstream, data_dir: Path, *, app: str, prefix: str, master: str,
                  ingress_replicas: int = 1, edit: Callable[[dict], None] | None = None) -> Iterator[KeyedGateway]:
    """Body of a module fixture: the gateway for the test config with keys on, deleted after;
    `edit` changes the raw config first (a module's own cascades, say)."""
    from app.config import parse_config

    port = free_port()
    raw = gateway_test_config(mock.port, port)
    raw["server"]["data_dir"] = str(data_dir)
    raw["accounts"] = {"require_keys": True, "master_key": master, "settle_interval_s": 0.2}
    raw["deployments"]["ingress"]["num_replicas"] = ingress_replicas
    raw["server"]["app_name"] = app  # its vLLM tiers' applications are named after it
    if edit is not None:
        edit(raw)
    port = serve_http_port(port)
    gw = KeyedGateway(f"http://127.0.0.1:{port}{prefix}", parse_config(raw), mock, master, app, prefix)
    gw.deploy()
    mock.reset()
    yield gw
    mock.reset()
    gw.delete()


def admin(gw: KeyedGateway, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, gw.url + path, headers={"Authorization": f"Bearer {gw.master}"}, timeout=30, **kw)


def new_key(gw: KeyedGateway, **limits: Any) -> dict:
    r = admin(gw, "POST", "/key/generate", json=limits)
    assert r.status_code == 200, r.text
    return r.json()
