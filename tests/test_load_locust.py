"""The locust scenarios (load/locustfile.py) run headless against real gateways for a few seconds.

Against the session gateway (keys off): every scenario sends requests and none fails. Against a
keys-on app with two keys, one limited to 2 requests a minute: the quota answers 429 in
OpenAI's shape, which the `keys` scenario reports as `keys 429 (quota)`, never as a failure.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.faults_support import MASTER, deploy_app


def _locust(host: str, out: Path, env: dict[str, str], *extra: str, seconds: int = 6) -> dict[str, dict[str, str]]:
    """Run locust headless; returns the stats CSV's rows by name (`Aggregated` included)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "load" / "locustfile.py"), "--headless", "-u", "4",
           "-r", "4", "-t", f"{seconds}s", "--host", host, "--csv", str(out / "locust"), "--html",
           str(out / "locust.html"), "--stop-timeout", "10", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    stats = out / "locust_stats.csv"
    assert stats.exists(), f"locust wrote no CSV (rc {proc.returncode}): {proc.stderr[-2000:]}"
    assert (out / "locust.html").stat().st_size > 0
    with stats.open() as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_locust_scenarios_against_the_gateway(gateway, mock, tmp_path):
    rows = _locust(gateway.url, tmp_path, {"DOKA_LOCUST_KEYS": "sk-a,sk-b"})
    for name in ("chat", "auto", "stream", "keys", "stream first chunk"):
        assert int(rows[name]["Request Count"]) > 0, (name, rows.keys())
    total = rows["Aggregated"]
    assert int(total["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()


@pytest.fixture(scope="module")
def keyed(ray_cluster, mock_upstream, tmp_path_factory):
    from ray import serve

    a = deploy_app("doka-locust-keys", "/locust-keys", mock_upstream.port, str(tmp_path_factory.mktemp("lkeys")))
    yield a
    serve.delete(a.name)


def test_locust_mixed_keys_with_quotas(keyed, mock, tmp_path):
    tight = keyed.new_key(rpm_limit=2)
    roomy = keyed.new_key(tokens_per_day=10_000_000)
    rows = _locust(keyed.url, tmp_path, {"DOKA_LOCUST_KEYS": f"{tight['key']},{roomy['key']}",
                                         "DOKA_LOCUST_KEY": MASTER}, "--tags", "keys")
    assert int(rows["keys"]["Request Count"]) > 2
    assert int(rows["keys 429 (quota)"]["Request Count"]) > 0  # the tight key hit its quota
    assert int(rows["Aggregated"]["Failure Count"]) == 0, (tmp_path / "locust_failures.csv").read_text()
    assert len(keyed.ledger(roomy["key_id"])) > 0  # the roomy key's answers were charged
