"""Graceful shutdown: SSE streams in flight on an ingress replica that Serve drains all complete.

A keys-on app streams slow answers (the mock upstream paces its chunks) to a few clients; while
they stream, the app is redeployed with a changed config, so Serve replaces every replica and
drains the old ones with the config's `graceful_shutdown_timeout_s` / `graceful_shutdown_wait_loop_s`.
Asserted: every stream that started ends with `[DONE]` and the full answer, the old ingress
replica was stopping while those streams were still running and only exited after the last one
ended (how many outlived its listener is recorded), the new replicas answer, no answer is missing from
the ledger, and the deployed Serve
options are the ones the config asked for.

Behind HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1) a draining ingress replica first stays reachable
for RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (30 s by default, so load balancers can
deregister it), then closes its listener and waits for in-flight requests. The test sets that
window to MIN_DRAIN_S in the ingress replica's env, so the streams outlive the listener and the
drain itself is what keeps them alive.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import httpx
import pytest

from load.faults import ScenarioResult, chat_body, drive, ledger_missing, record
from tests.faults_support import deploy_app, wait_ok

APP, PREFIX = "doka-drain", "/drain"
MODEL = "mock-gpt-3.5"
STREAMS = 6
CHUNKS, CHUNK_INTERVAL_MS = 48, 250  # 12 s per stream
REDEPLOY_AT_S = 1.5
MIN_DRAIN_S = 2
WAIT_LOOP_S = 0.5
SHUTDOWN_TIMEOUT_S = 25.0


def _drain_options(raw: dict[str, Any]) -> None:
    for section in ("ingress", "router", "egress"):
        raw["deployments"][section].update(graceful_shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
                                           graceful_shutdown_wait_loop_s=WAIT_LOOP_S)
    raw["deployments"]["ingress"]["ray_actor_options"] = {
        "runtime_env": {"env_vars": {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(MIN_DRAIN_S)}}}


@pytest.fixture(scope="module")
def app(ray_cluster, mock_upstream, tmp_path_factory):
    from ray import serve

    a = deploy_app(APP, PREFIX, mock_upstream.port, str(tmp_path_factory.mktemp("drain")), tweak=_drain_options)
    yield a
    serve.delete(a.name)


def _deployments(app_name: str) -> dict[str, Any]:
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()["applications"][app_name]["deployments"]


def _replicas(app_name: str, deployment: str) -> dict[str, str]:
    """replica_id -> state of one deployment's live replicas."""
    return {r["replica_id"]: r["state"] for r in _deployments(app_name)[deployment]["replicas"]}


def _redeploy(raw: dict[str, Any]) -> None:
    """The same app with a changed config: Serve rolls every replica to a new version."""
    from ray import serve

    from app.config import parse_config
    from app.graph import build_app

    raw = copy.deepcopy(raw)
    raw["server"]["max_body_bytes"] = int(raw["server"].get("max_body_bytes") or 1_000_000) + 1
    serve.run(build_app(parse_config(raw)), name=APP, route_prefix=PREFIX)


def test_streams_in_flight_complete_when_the_ingress_replica_drains(app, mock):
    key = app.new_key(tokens_per_day=10_000_000)
    auth = {"Authorization": f"Bearer {key['key']}"}
    mock.state(chunks=CHUNKS, chunk_interval_ms=CHUNK_INTERVAL_MS)
    reference = httpx.post(f"{app.url}/v1/chat/completions", json=chat_body(MODEL), headers=auth, timeout=60)
    assert reference.status_code == 200, reference.text
    full = reference.json()["choices"][0]["message"]["content"]
    assert len(full.split()) == CHUNKS

    old = set(_replicas(APP, "Ingress"))
    seen: dict[str, Any] = {}

    def drain() -> None:
        time.sleep(REDEPLOY_AT_S)
        seen["redeploy_at"] = time.monotonic()
        deployer = threading.Thread(target=_redeploy, args=(app.raw,), daemon=True)
        deployer.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = _replicas(APP, "Ingress")
            now = time.monotonic()
            if "stopping_at" not in seen and any(states.get(r) == "STOPPING" for r in old):
                seen["stopping_at"] = now
            if not old & set(states):
                seen["gone_at"] = now
                break
            time.sleep(0.1)
        deployer.join(120)

    run = drive(f"{app.url}/v1/chat/completions", lambda i: chat_body(MODEL, stream=True), clients=STREAMS,
                requests=STREAMS, headers=lambda i: auth, during=drain, timeout=120)
    assert "gone_at" in seen, f"the old ingress replica never went away: {seen}"
    new = _replicas(APP, "Ingress")
    wait_ok(f"{app.url}/health/liveliness", 60)
    after = drive(f"{app.url}/v1/chat/completions", lambda i: chat_body(MODEL, stream=True), clients=3,
                  requests=3, headers=lambda i: auth, timeout=60)
    mock.reset()
    lost = ledger_missing(run, app.ledger_ids(key["key_id"]))

    stop_at = seen.get("stopping_at", seen["gone_at"])
    ends = [o.started + o.elapsed for o in run.outcomes]
    in_flight_at_stop = sum(o.started <= stop_at < end for o, end in zip(run.outcomes, ends))
    past_listener = sum(end > stop_at + MIN_DRAIN_S for end in ends)
    complete = sum(o.ok and o.text == full for o in run.outcomes)
    exited_after_s = round(seen["gone_at"] - max(ends), 2)
    deployed = _deployments(APP)
    opts = {d: deployed[d]["deployment_config"] for d in ("Ingress", "Router", "Egress") if d in deployed}
    assert "Router" not in opts  # config/default.yaml: the router runs in the ingress (router.placement)
    # past_listener is a figure, not a criterion: how soon Serve stops the old replica varies with load
    passed = (complete == STREAMS and in_flight_at_stop > 0 and exited_after_s > 0
              and after.errors == 0 and not lost)
    record(ScenarioResult(
        scenario="graceful shutdown: ingress replica drained mid-stream",
        load=f"{STREAMS} SSE streams x {CHUNKS * CHUNK_INTERVAL_MS / 1000:g} s",
        faults=f"redeploy at {REDEPLOY_AT_S:g} s: every replica replaced (wait loop {WAIT_LOOP_S:g} s, "
               f"timeout {opts['Ingress']['graceful_shutdown_timeout_s']:g} s)",
        requests=run.requests + after.requests, errors=run.errors + after.errors, status_counts=run.statuses(),
        data_lost=len(lost), recovery_s=round(seen["gone_at"] - seen["redeploy_at"], 2), passed=passed,
        notes=f"{complete}/{STREAMS} streams complete with full content; {in_flight_at_stop} in flight when the "
              f"old replica began stopping, {past_listener} still streaming after its listener closed; it exited "
              f"{exited_after_s:g} s after the last stream ended (recovery = redeploy to old replica gone)"))

    assert not old & set(new), "the redeploy did not replace the ingress replica"
    assert complete == STREAMS, [(o.status, o.done, o.error, len(o.text)) for o in run.outcomes]
    assert in_flight_at_stop > 0, (seen, [(o.started, e) for o, e in zip(run.outcomes, ends)])
    assert exited_after_s > 0, "the old replica exited before its streams ended"
    assert after.errors == 0, after.statuses()
    assert not lost, f"answers without a ledger row: {lost}"
    assert "Egress" not in opts  # config/default.yaml: providers are called from the ingress (egress.placement)
    # Serve raises an HAProxy-fronted ingress's timeout to cover its min draining period, never lowers it
    assert opts["Ingress"]["graceful_shutdown_timeout_s"] >= SHUTDOWN_TIMEOUT_S
    assert opts["Ingress"]["graceful_shutdown_wait_loop_s"] == WAIT_LOOP_S
