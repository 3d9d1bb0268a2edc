"""Observability wired into the real gateway: metrics after traffic, trace records, feedback."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx

from observability.feedback import load_joined
from observability.trace_store import read_records


def _traces_root(gateway) -> str:
    return str(Path(gateway.cfg["server"]["data_dir"]) / "traces")


def _wait_for(fn, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(0.25)
    return fn()


def test_metrics_traces_and_feedback_after_traffic(gateway, mock):
    tag = uuid.uuid4().hex[:8]
    ids = []
    for i in range(3):
        rid = f"obs-{tag}-{i}"
        r = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"x-request-id": rid}, timeout=30,
                       json={"model": "auto", "messages": [{"role": "user", "content": f"observe me {tag} {i}"}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-doka-request-id"] != rid  # the client's id is a correlation field only
        ids.append(r.headers["x-doka-request-id"])  # the trace's and feedback's key: doka's own id
    # a stream, and a request to an unknown model (never reaches observation, still a clean 4xx)
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=30, headers={"x-request-id": f"obs-{tag}-s"},
                      json={"model": "mock-gpt-4", "stream": True, "messages": [{"role": "user", "content": "s"}]}) as s:
        assert s.status_code == 200
        ids.append(s.headers["x-doka-request-id"])
        assert b"[DONE]" in b"".join(s.iter_bytes())
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "nope", "messages": []}).status_code in (400, 404)

    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    assert "doka_requests_total{" in text and 'status="ok"' in text
    assert "doka_routing_decisions_total{" in text and 'strategy="weighted_round_robin"' in text
    assert "doka_upstream_attempts_total{" in text
    assert "doka_request_latency_seconds_bucket{" in text
    assert "doka_tokens_total{" in text
    assert "doka_time_to_first_token_seconds_bucket{" in text

    ok = httpx.post(f"{gateway.url}/v1/feedback", json={"request_id": ids[0], "score": 0.8, "comment": "good"})
    assert ok.status_code == 200 and ok.json()["stored"] is True
    bad = httpx.post(f"{gateway.url}/v1/feedback", json={"request_id": ids[0], "score": 7})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"
    bad = httpx.post(f"{gateway.url}/v1/feedback", content=b"[1,2]", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"

    root = _traces_root(gateway)
    mine = _wait_for(lambda: [r for r in read_records(f"{root}/requests") if r["request_id"] in ids]
                     if len([r for r in read_records(f"{root}/requests") if r["request_id"] in ids]) == 4 else None)
    assert mine and len(mine) == 4
    auto = [r for r in mine if r["requested_model"] == "auto"]
    assert all(r["route_strategy"] == "weighted_round_robin" and r["model"] in r["candidates"] for r in auto)
    assert all(r["status_code"] == 200 and r["latency_ms"] > 0 for r in mine)
    assert auto[0]["prompt"].startswith("observe me")
    stream = next(r for r in mine if r["stream"])
    assert stream["model"] == "mock-gpt-4" and stream["ttft_ms"] is not None
    joined = _wait_for(lambda: [j for j in load_joined(root) if j["request_id"] == ids[0]])
    assert joined and joined[0]["feedback_score"] == 0.8
