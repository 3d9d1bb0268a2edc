"""Killing a Serve replica process (SIGKILL) under load: errors, recovery time, no lost ledger rows.

Keys on, 8 clients for a fixed window, a mix of explicit, `auto` and streaming requests; one
replica of the ingress, router or egress is killed 3 s in. Serve's controller replaces it.
The figures (errors, status mix, seconds until the last failure, seconds until the new replica
is up) go to docs/reliability.md. Asserted: the gateway recovers on its own, no answer is
missing from the ledger, and nothing answers 500 (in-flight requests on a killed replica fail
as 502/503 or a dropped connection; a killed router costs nothing, the ingress falls back).
A killed ingress cannot settle what it had in flight: the accounts core closes those reservations
with a ledger row once the replica's heartbeat lease runs out. A killed Accounts replica loses no
row a client saw answered: settlements are fsync'd to its spool before they are answered, the
ingress retries a settlement while the replica is being replaced, and the new one replays the spool.
"""

from __future__ import annotations

import time

import pytest

from load.faults import ScenarioResult, chat_body, drive, ledger_missing, record
from tests.faults_support import deploy_app, kill_replica, wait_ok, wait_replaced

CLIENTS = 8
WINDOW_S = 14.0
KILL_AT_S = 3.0


@pytest.fixture(scope="module")
def app(ray_cluster, mock_upstream, tmp_path_factory):
    from ray import serve

    def two_ingress(raw):
        raw["deployments"]["ingress"]["num_replicas"] = 2  # a fleet: one replica may die
        raw["router"]["placement"] = "deployment"  # the graph with a Router deployment to kill too
        raw["egress"] = {"placement": "deployment"}  # and an Egress deployment

    a = deploy_app("doka-faults-kill", "/faults-kill", mock_upstream.port, str(tmp_path_factory.mktemp("fkill")),
                   tweak=two_ingress)
    yield a
    serve.delete(a.name)


def _body(i: int) -> dict:
    if i % 3 == 0:
        return chat_body("mock-gpt-3.5", stream=True)
    return chat_body("auto" if i % 3 == 1 else "mock-mixtral")


@pytest.mark.parametrize("deployment", ["Router", "Egress", "Ingress", "Accounts"])
def test_killing_a_replica_under_load(app, mock, deployment):
    key = app.new_key(tokens_per_day=10_000_000)
    killed: dict = {}

    def fault() -> None:
        time.sleep(KILL_AT_S)
        killed["of"] = len(_replicas(app, deployment))  # before the kill: a replacement may start late
        killed["at"] = time.monotonic()
        killed["pid"] = kill_replica(app.name, deployment)
        killed["replaced_s"] = wait_replaced(app.name, deployment, killed["pid"])

    run = drive(f"{app.url}/v1/chat/completions", _body, clients=CLIENTS, duration=WINDOW_S,
                headers=lambda i: {"Authorization": f"Bearer {key['key']}"}, during=fault, timeout=60)
    wait_ok(f"{app.url}/health/liveliness", 60)
    after = drive(f"{app.url}/v1/chat/completions", _body, clients=4, requests=12,
                  headers=lambda i: {"Authorization": f"Bearer {key['key']}"})
    held = app.wait_no_holds(key["key_id"])  # a killed ingress's open reservations close after its lease
    rows = app.ledger(key["key_id"])
    have = {r["request_id"] for r in rows}
    lost = ledger_missing(run, have) + ledger_missing(after, have)
    orphaned = sum((r["route_reason"] or "").startswith("orphaned") for r in rows)
    # every doka response carries x-doka-request-id, its catch-all 500 handler's included
    # (tests/test_gateway_errors.py); a 500 without it was made by the load balancer (HAProxy /
    # Serve's proxy) for a request in flight on the killed process
    fivehundreds = sum(o.status == 500 and "x-doka-request-id" in o.headers for o in run.outcomes)
    lb_lost = sum(o.status == 500 and "x-doka-request-id" not in o.headers for o in run.outcomes)
    recovery = run.recovery_s(killed["at"])
    passed = after.errors == 0 and not lost and fivehundreds == 0 and held == 0
    record(ScenarioResult(
        scenario=f"kill {deployment.lower()} replica (SIGKILL)",
        load=f"{CLIENTS} clients x {WINDOW_S:g} s, explicit/auto/stream mix", faults=f"1 of {killed['of']} {deployment} replicas killed at {KILL_AT_S:g} s",
        requests=run.requests, errors=run.errors, expected_errors=run.errors, status_counts=run.statuses(),
        data_lost=len(lost), recovery_s=recovery, passed=passed,
        notes=f"replacement replica up after {killed['replaced_s']:.1f} s; {after.requests} requests after: "
              f"{after.errors} errors; doka 500s: {fivehundreds}; load-balancer 500s for requests in flight "
              f"on the killed process: {lb_lost}; rows closed for the lost replica: {orphaned}"))
    assert after.errors == 0, after.statuses()
    assert not lost, f"answers without a ledger row: {lost[:5]}"
    assert held == 0, "reservations of the killed replica still hold the key's quota"
    assert fivehundreds == 0, run.statuses()  # no 500 from doka itself


def _replicas(app, deployment: str) -> list:
    from tests.faults_support import replica_pids

    return replica_pids(app.name, deployment)
