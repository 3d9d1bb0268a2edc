"""Helpers for the vLLM tests: a gateway config with the local vLLM tier, and deploying it as its
own Serve application next to whatever else the test session runs."""

from __future__ import annotations

import copy
import time
from typing import Any

import httpx
import yaml

from tests.conftest import DEFAULT_CONFIG, REPO, gateway_test_config, serve_http_port

TINY_MODEL_DIR = REPO / ".doka" / "models" / "tiny-llama"


def default_vllm_entry() -> dict[str, Any]:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    return copy.deepcopy(next(m for m in raw["model_list"] if m.get("provider") == "vllm"))


def vllm_gateway_config(mock_port: int, server_port: int, *, name: str, model_source: str,
                        timeout: float, app_name: str) -> dict[str, Any]:
    """The shared test config plus one vLLM model `name` in front of mock-mixtral in a chain."""
    raw = gateway_test_config(mock_port, server_port)
    entry = default_vllm_entry()
    entry["model_name"] = name
    entry["vllm"]["model_source"] = model_source
    entry["model_info"]["timeout"] = timeout
    raw["model_list"].insert(0, entry)
    raw["fallbacks"] = {"local-chain": [name, "mock-mixtral"]}
    raw["server"]["app_name"] = app_name
    return raw


def deploy_gateway(raw: dict[str, Any], route_prefix: str, blocking: bool) -> str:
    """Deploy the config's applications (app/graph.py `build_apps`): each vLLM tier its own, with
    no route, then the gateway under its app name and `route_prefix`; returns the base URL.

    `blocking`: wait until each tier application runs (a tier that cannot load never does; the
    gateway runs without it either way)."""
    from ray import serve

    from app.config import parse_config
    from app.graph import build_apps

    cfg = parse_config(raw)
    port = serve_http_port()
    apps = build_apps(cfg)
    gateway = apps.pop(cfg.server.app_name)
    for name, tier in apps.items():
        # serve._run: serve.run cannot skip waiting for RUNNING, which a broken vLLM tier never reaches
        serve._run(tier, name=name, route_prefix=None, _blocking=blocking)
    serve.run(gateway, name=cfg.server.app_name, route_prefix=route_prefix)
    url = f"http://127.0.0.1:{port}{route_prefix}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"gateway app {cfg.server.app_name} did not come up at {url}")


def delete_gateway(raw: dict[str, Any]) -> None:
    """Delete the gateway application and its tier applications."""
    from ray import serve

    from app.config import parse_config
    from deployments.tier_apps import tier_apps

    cfg = parse_config(raw)
    deployed = serve.status().applications
    for name in [cfg.server.app_name, *(w["app"] for w in tier_apps(cfg).values())]:
        if name in deployed:
            serve.delete(name)
