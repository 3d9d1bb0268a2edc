"""Operator defaults (docs/security.md): a keyed gateway never starts without its accounts, and
`/metrics` shows tenants' series (requests, tokens, spend by key) only to the master key or on
the configured tenant listener; the anonymous page keeps the gateway series for Prometheus.
"""

from __future__ import annotations

import sys

import httpx
import pytest

from app.config import DEFAULT_CONFIG_PATH, ConfigError, parse_config
from load.isolation import free_port
from tests.conftest import gateway_test_config
from tests.keyed_gateway import keyed_gateway, new_key

MASTER = "sk-master-secops"


def _keyed_config(require_keys: bool = True):
    raw = gateway_test_config(9, 9)
    raw["accounts"] = {"require_keys": require_keys, "master_key": MASTER}
    return parse_config(raw)


# ---------------------------------------------------------------- no accounts, no start
def test_keyed_gateway_refuses_to_build_when_accounts_cannot_be_imported(monkeypatch):
    from app.graph import build_app

    build_app(_keyed_config())  # the same config builds while accounts imports
    monkeypatch.setitem(sys.modules, "accounts.gateway", None)  # `import accounts.gateway` now fails
    with pytest.raises(ConfigError) as e:
        build_app(_keyed_config())
    msg = str(e.value)
    assert "accounts.require_keys is true" in msg and "refusing to start" in msg and "\n" not in msg


def test_keyed_gateway_refuses_to_build_when_accounts_cannot_be_built(monkeypatch):
    import accounts.gateway
    from app.graph import build_app

    def broken(cfg):
        raise RuntimeError("database is unreachable")

    monkeypatch.setattr(accounts.gateway, "build_accounts_app", broken)
    with pytest.raises(ConfigError, match="RuntimeError: database is unreachable"):
        build_app(_keyed_config())
    build_app(_keyed_config(require_keys=False))  # keys off: nothing to refuse


def test_ingress_refuses_a_keyed_config_with_no_accounts_bound():
    from deployments.ingress import NoAccounts, load_accounts

    with pytest.raises(ConfigError, match="no accounts deployment is bound"):
        load_accounts(_keyed_config(), None)
    assert isinstance(load_accounts(_keyed_config(require_keys=False), None), NoAccounts)


def test_doka_run_prints_one_line_and_exits_2_when_keys_cannot_be_checked(monkeypatch, capsys):
    """`doka run`'s own handler: the ConfigError from the graph is one line on stderr, exit 2."""
    import app.run_cli as run_cli

    class _Stop(Exception):
        pass

    calls = []
    monkeypatch.setattr(run_cli, "start_mocks", lambda *a: [])
    monkeypatch.setattr("ray.init", lambda *a, **k: calls.append("init"))
    monkeypatch.setattr("ray.shutdown", lambda *a, **k: calls.append("shutdown"))
    monkeypatch.setattr("ray.serve.start", lambda *a, **k: None)
    monkeypatch.setattr("ray.serve.shutdown", lambda *a, **k: None)
    monkeypatch.setattr("ray.serve.run", lambda *a, **k: (_ for _ in ()).throw(_Stop()))
    monkeypatch.setattr("signal.signal", lambda *a: None)
    for name in {**run_cli.LOCAL_ENV, **run_cli.PERF_ENV}:  # cmd_run sets these: restore them after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setitem(sys.modules, "accounts.gateway", None)
    from app.cli import main

    rc = main(["run", "--config", str(DEFAULT_CONFIG_PATH), "--no-mock", "--port", str(free_port())])  # 8000 may be taken
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "accounts.require_keys is true" in lines[0] and "Traceback" not in err
    assert "init" not in calls  # refused before a local cluster is started for nothing


# ---------------------------------------------------------------- /metrics and tenants
TENANT_PORT = free_port()


@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, tmp_path_factory):
    def edit(raw: dict) -> None:
        raw.setdefault("observability", {})["tenant_metrics_port"] = TENANT_PORT

    yield from keyed_gateway(mock_upstream, tmp_path_factory.mktemp("secops"), app="doka-secops",
                             prefix="/secops", master=MASTER, edit=edit)


def test_per_key_series_only_for_the_master_key_or_the_tenant_listener(gw):
    key = new_key(gw, key_alias="team-a-bot", team="team-a")
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key['key']}"}, timeout=60,
                   json={"model": "mock-gpt-3.5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    assert r.status_code == 200, r.text
    series = f'key="{key["key_id"]}"'

    master = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10)
    assert master.status_code == 200
    # the per-key series exist (so their absence below means something)
    assert f"doka_key_requests_total{{{series}" in master.text
    assert "doka_key_tokens_total{" in master.text and f'{series},model="mock-gpt-3.5"' in master.text
    assert "doka_key_cost_usd_total{" in master.text
    assert 'doka_requests_total{model="mock-gpt-3.5",status="ok"}' in master.text

    anonymous = httpx.get(gw.url + "/metrics", timeout=10)
    assert anonymous.status_code == 200
    assert 'doka_requests_total{model="mock-gpt-3.5",status="ok"}' in anonymous.text  # gateway series stay
    assert "doka_tokens_total{" in anonymous.text
    for secret in ("doka_key_", key["key_id"], "team-a", 'key="'):
        assert secret not in anonymous.text, secret

    tenant_key = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {key['key']}"}, timeout=10)
    assert tenant_key.status_code == 401 and "doka_key_" not in tenant_key.text

    listener = httpx.get(f"http://127.0.0.1:{TENANT_PORT}/metrics", timeout=10)
    assert listener.status_code == 200
    assert f"doka_key_requests_total{{{series}" in listener.text
