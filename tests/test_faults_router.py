"""Learned router faults under `auto` load: a corrupted artifact, an unreachable registry.

A learned-router app (deployed declaratively, as a RayService does) serves `auto` to a few
clients. While they run, the router is reconfigured onto an artifact that no longer verifies
(its model file truncated in the registry) or onto a registry that cannot be reached (a closed
port). Asserted: no client sees an error, answers keep coming from the static fallback strategy
(`x-doka-strategy`) while readiness says `degraded` (and stays 200), and once a good artifact is
reachable again the learned router serves again.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from load.faults import ScenarioResult, drive, record
from tests.conftest import free_port, serve_http_port
from tests.router_deployment_support import CODE, LearnedApp, learned_app, wait_for

APP, PREFIX = "doka-faults-router", "/faults-router"
CLIENTS = 4
FAULT_AT_S = 2.0
DEGRADED_HOLD_S = 3.0  # keep the fault on this long after readiness reports it


@pytest.fixture(scope="module")
def learned(ray_cluster, mock_upstream, tmp_path_factory):
    with learned_app(mock_upstream.port, serve_http_port(), tmp_path_factory.mktemp("faults-router"), APP,
                     PREFIX) as app:
        yield app


def _auto(i: int) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": CODE[i % len(CODE)]}], "max_tokens": 8}


def _corrupt(app: LearnedApp) -> tuple[dict[str, Any], Any]:
    """Truncate v1's model file and ask for v1 again; returns (user_config, undo)."""
    model_file = app.registry / "versions" / app.v1 / "model.skops"
    good = model_file.read_bytes()
    model_file.write_bytes(good[: len(good) // 2])
    return {"artifact": app.v1}, lambda: model_file.write_bytes(good)


def _unreachable(app: LearnedApp) -> tuple[dict[str, Any], Any]:
    """Point the router at a registry URL nobody listens on (connection refused)."""
    return {"artifact": app.v1, "registry": f"http://127.0.0.1:{free_port()}/registry"}, lambda: None


FAULTS = {"corrupt": ("artifact corrupted in the registry (model file truncated), reload", _corrupt),
          "unreachable": ("registry unreachable (connection refused), reload", _unreachable)}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_auto_traffic_continues_on_the_fallback(learned, mock, fault):
    what, inject = FAULTS[fault]
    fallback = learned.raw["router"].get("fallback_strategy", "weighted_round_robin")
    seen: dict[str, Any] = {}

    def during() -> None:
        time.sleep(FAULT_AT_S)
        user_config, undo = inject(learned)
        seen["fault_at"] = time.monotonic()
        try:
            learned.reconfigure(**user_config)
            seen["ready"] = wait_for(lambda: (lambda r: r if r["router"]["degraded"] else None)(learned.router()),
                                     120, what="degraded readiness")
            seen["degraded_at"] = time.monotonic()
            time.sleep(DEGRADED_HOLD_S)
        finally:
            undo()
            seen["repair_at"] = time.monotonic()
            learned.reconfigure(artifact="latest")  # a good, reachable artifact again
        wait_for(lambda: not learned.router()["router"]["degraded"], 120, what="recovered")
        seen["recovered_at"] = time.monotonic()
        time.sleep(1.0)  # some learned traffic after the recovery

    # the load runs for as long as the fault script does: inject, degraded, repair, recovered
    run = drive(f"{learned.url}/v1/chat/completions", _auto, clients=CLIENTS, duration=600, during=during,
                until_during=True, timeout=60)
    strategies = [o.headers.get("x-doka-strategy") for o in run.outcomes]
    degraded_window = [o for o in run.outcomes
                       if seen["degraded_at"] <= o.started and o.started + o.elapsed <= seen["repair_at"]]
    on_fallback = sum(o.headers.get("x-doka-strategy") == fallback for o in degraded_window)
    learned_after = sum(o.headers.get("x-doka-strategy") == "learned" for o in run.outcomes
                        if o.started > seen["recovered_at"])
    ready = seen["ready"]
    passed = (run.errors == 0 and all(o.status == 200 for o in run.outcomes) and degraded_window
              and on_fallback == len(degraded_window) and ready["http"] == 200 and ready["status"] == "degraded"
              and learned_after > 0)
    record(ScenarioResult(
        scenario=f"router: {what.split(' (')[0]}", load=f"`auto`, {CLIENTS} clients x {run.elapsed:.0f} s",
        faults=what, requests=run.requests, errors=run.errors, status_counts=run.statuses(), data_lost=None,
        recovery_s=round(seen["recovered_at"] - seen["repair_at"], 2), passed=bool(passed),
        notes=f"degraded {seen['degraded_at'] - seen['fault_at']:.1f} s after the reload; "
              f"{on_fallback}/{len(degraded_window)} answers meanwhile by `{fallback}`; readiness "
              f"{ready['http']} `{ready['status']}`; strategies seen {dict(sorted(Counter(map(str, strategies)).items()))}; "
              f"recovery = repair to learned again"))
    assert run.errors == 0 and all(o.status == 200 for o in run.outcomes), run.statuses()
    assert degraded_window, "no request ran while the router was degraded"
    assert on_fallback == len(degraded_window), Counter(o.headers.get("x-doka-strategy") for o in degraded_window)
    assert ready["http"] == 200 and ready["status"] == "degraded" and ready["checks"]["router"] == "degraded"
    assert ready["router"]["serving"] == fallback and ready["router"]["reason"]
    assert learned_after > 0, "the learned router did not come back"

