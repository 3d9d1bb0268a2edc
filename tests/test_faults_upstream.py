"""Upstream faults at 10-50% rates with a healthy fallback tier: zero client-visible errors.

Keys on (every answer must leave a ledger row). The chain mock-mixtral (1 s timeout) ->
mock-gpt-4 is driven by 8 concurrent clients; the mock upstream fails a share of mixtral's
requests. A stream whose connection drops *after* its first chunk reached the client cannot be
retried transparently (the client already has part of an answer): doka ends it with an OpenAI
error event and charges what was delivered; those are counted as errors, expected ones.
"""

from __future__ import annotations

import pytest

from load.faults import ScenarioResult, chat_body, drive, ledger_missing, record
from tests.faults_support import deploy_app

CLIENTS = 8
N = 48


@pytest.fixture(scope="module")
def app(ray_cluster, mock_upstream, tmp_path_factory):
    from ray import serve

    a = deploy_app("doka-faults-upstream", "/faults-up", mock_upstream.port, str(tmp_path_factory.mktemp("fup")))
    yield a
    serve.delete(a.name)


def _run(app, mock, fault: str, rate: float, stream: bool) -> tuple:
    key = app.new_key(tokens_per_day=10_000_000)
    mock.state(faults={"mixtral-8x7b": fault}, fault_rate=rate, reset_counts=True)
    run = drive(f"{app.url}/v1/chat/completions", lambda i: chat_body("mock-mixtral", stream=stream),
                clients=CLIENTS, requests=N, headers=lambda i: {"Authorization": f"Bearer {key['key']}"})
    counts = mock.state()["counts"]
    mock.reset()
    rows = {r["request_id"]: r for r in app.ledger(key["key_id"])}
    return run, counts, ledger_missing(run, rows), rows


@pytest.mark.parametrize("fault,rate", [("500", 0.5), ("503", 0.3), ("429", 0.3), ("timeout", 0.1)])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_faults_are_invisible_with_a_healthy_fallback(app, mock, fault, rate, stream):
    run, counts, lost, _ = _run(app, mock, fault, rate, stream)
    injected = counts.get(f"fault_{fault}", 0)
    fell_back = sum(o.model == "mock-gpt-4" for o in run.outcomes)
    passed = run.errors == 0 and not lost and injected > 0 and fell_back >= injected
    record(ScenarioResult(
        scenario=f"upstream {fault} at {rate:.0%} ({'stream' if stream else 'plain'})",
        load=f"{N} req, {CLIENTS} clients", faults=f"{injected} x {fault} on tier 1",
        requests=run.requests, errors=run.errors, status_counts=run.statuses(), data_lost=len(lost),
        passed=passed, notes=f"{fell_back} answered by fallback tier"))
    assert injected > 0, "the mock injected nothing: the scenario proved nothing"
    assert run.errors == 0, run.statuses()
    assert fell_back >= injected
    assert all(o.chunks > 0 for o in run.outcomes) if stream else True
    assert not lost, f"answers without a ledger row: {lost[:5]}"


def test_connection_drops_mid_stream_end_with_an_error_event(app, mock):
    """Drops after the first chunk: an error event per drop, nothing else fails, every stream billed."""
    run, counts, lost, rows = _run(app, mock, "drop", 0.3, stream=True)
    drops = counts.get("fault_drop", 0)
    events = [o for o in run.outcomes if o.error_event]
    other = run.errors - len(events)
    passed = drops > 0 and len(events) == drops and other == 0 and not lost
    record(ScenarioResult(
        scenario="upstream connection drop mid-stream at 30%", load=f"{N} streams, {CLIENTS} clients",
        faults=f"{drops} drops after chunk 1", requests=run.requests, errors=run.errors, expected_errors=len(events),
        status_counts=run.statuses(), data_lost=len(lost), passed=passed,
        notes="after a chunk reached the client no tier can take over: OpenAI error event, partial answer billed"))
    assert drops > 0
    assert len(events) == drops and other == 0, run.statuses()
    for o in events:
        assert o.chunks >= 1 and o.body["error"]["code"] == "upstream_stream_error"
    assert not lost
    for o in events:  # billed for what was delivered, recorded as the failure it was
        assert rows[o.request_id]["status"] == 502 and rows[o.request_id]["completion_tokens"] > 0


def test_every_status_is_an_openai_answer_when_all_tiers_fail(app, mock):
    """Both tiers failing at 50%: the requests that fail are clean 502s in OpenAI shape, all billed at 0."""
    key = app.new_key()
    mock.state(faults={"*": "503"}, fault_rate=0.5, reset_counts=True)
    run = drive(f"{app.url}/v1/chat/completions", lambda i: chat_body("mock-mixtral"), clients=CLIENTS, requests=N,
                headers=lambda i: {"Authorization": f"Bearer {key['key']}"})
    mock.reset()
    rows = app.ledger(key["key_id"])
    by_id = {r["request_id"]: r for r in rows}
    failed = [o for o in run.outcomes if o.status != 200]
    both_failed_expected = round(N * 0.25)
    passed = all(o.status == 502 and o.body["error"]["code"] == "upstream_exhausted" for o in failed) and \
        all(o.request_id in by_id for o in run.outcomes) and all(o.status != 0 for o in run.outcomes)
    record(ScenarioResult(
        scenario="both tiers 503 at 50%", load=f"{N} req, {CLIENTS} clients", faults="503 on every tier",
        requests=run.requests, errors=run.errors, expected_errors=len(failed), status_counts=run.statuses(),
        data_lost=sum(o.request_id not in by_id for o in run.outcomes), passed=passed,
        notes=f"~{both_failed_expected} expected 502 (both tiers failed): OpenAI shape, ledger row each"))
    assert passed, run.statuses()
    assert all(by_id[o.request_id]["status"] == 502 and by_id[o.request_id]["cost_usd"] == 0 for o in failed)
