"""A client that goes away mid-stream cancels the upstream call (the mock counts it)."""

from __future__ import annotations

import time

import httpx


def test_client_disconnect_cancels_upstream_stream(gateway, mock):
    mock.state(chunks=100, chunk_interval_ms=100)  # a 10 s answer: far longer than the test
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=20,
                      json={"model": "mock-gpt-3.5", "messages": [{"role": "user", "content": "long"}],
                            "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(3)]
        assert any(line.startswith("data: {") for line in got)
    # the client closed the connection; the gateway must close the upstream stream too
    deadline = time.time() + 15
    counts: dict = {}
    while time.time() < deadline:
        counts = mock.state()["counts"]
        if counts.get("streams_cancelled"):
            break
        time.sleep(0.2)
    assert counts.get("streams_cancelled") == 1, counts
    assert not counts.get("streams_completed")
