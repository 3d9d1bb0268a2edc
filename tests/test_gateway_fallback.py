"""Fallback chains: a failing tier hands over to the next; all tiers down -> 502/504.

The test config's chain is mock-mixtral (timeout 1 s) -> mock-gpt-4 (timeout 3 s); the mock
upstream injects faults per upstream model name.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("fault", ["500", "503", "429"])
def test_http_error_on_first_tier_falls_back(gateway, mock, fault):
    mock.state(faults={"mixtral-8x7b": fault})
    raw = gateway.client().chat.completions.with_raw_response.create(model="mock-mixtral", messages=MSG)
    assert raw.parse().choices[0].message.content.startswith("mock answer from gpt-4-turbo")
    assert raw.headers["x-doka-model"] == "mock-gpt-4"
    assert raw.headers["x-doka-route-reason"] == "fallback:tier2"
    assert raw.headers["x-doka-tiers-tried"] == "mock-mixtral,mock-gpt-4"


# a hanging tier with a 1 s timeout must be left after 1 s; the slack is for a busy 2-core box
# (the next tier answers in ~5 ms), far less than any longer wait a broken timeout would give
TIER_TIMEOUT_S, SLACK_S = 1.0, 1.5


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_on_first_tier_falls_back(gateway, mock, stream):
    mock.state(faults={"mixtral-8x7b": "timeout"})
    started = time.perf_counter()
    raw = gateway.client().chat.completions.with_raw_response.create(model="mock-mixtral", messages=MSG,
                                                                    stream=stream)
    elapsed = time.perf_counter() - started  # with a stream: until its headers, i.e. its first chunk
    assert raw.headers["x-doka-model"] == "mock-gpt-4"
    assert raw.headers["x-doka-route-reason"] == "fallback:tier2"
    assert mock.state()["counts"]["fault_timeout"] == 1
    assert TIER_TIMEOUT_S <= elapsed < TIER_TIMEOUT_S + SLACK_S, f"hanging tier left after {elapsed:.2f} s"


def test_stream_falls_back_before_the_first_chunk(gateway, mock):
    mock.state(faults={"mixtral-8x7b": "503"})
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=20,
                      json={"model": "mock-mixtral", "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["x-doka-model"] == "mock-gpt-4"
        assert r.headers["x-doka-route-reason"] == "fallback:tier2"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["model"] == "mock-gpt-4"  # doka's name of the tier that answered
    assert r.headers["x-doka-upstream-model"] == "gpt-4-turbo"


def test_every_tier_down_gives_502_in_openai_shape(gateway, mock):
    mock.state(faults={"*": "503"})
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "mock-mixtral", "messages": MSG}, timeout=20)
    assert r.status_code == 502
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "upstream_exhausted"
    assert "mock-mixtral" in err["message"] and "mock-gpt-4" in err["message"]
    assert r.headers["x-doka-tiers-tried"] == "mock-mixtral,mock-gpt-4"
    with pytest.raises(openai.APIStatusError) as exc:  # the SDK sees a normal API error
        gateway.client().chat.completions.create(model="mock-mixtral", messages=MSG)
    assert exc.value.status_code == 502


def test_last_tier_timing_out_gives_504(gateway, mock):
    mock.state(faults={"mixtral-8x7b": "500", "gpt-4-turbo": "timeout"})
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "mock-mixtral", "messages": MSG}, timeout=20)
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert "no answer within 3s" in r.json()["error"]["message"]


def test_streaming_with_every_tier_down_is_a_plain_error(gateway, mock):
    mock.state(faults={"*": "500"})
    r = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=20,
                   json={"model": "mock-mixtral", "messages": MSG, "stream": True})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_exhausted"


def test_failure_after_first_chunk_ends_stream_with_error_event(gateway, mock):
    mock.state(faults={"gpt-4-turbo": "drop"})
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=20,
                      json={"model": "mock-gpt-4", "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["x-doka-model"] == "mock-gpt-4"
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["delta"]["content"]
    assert events[-1]["error"]["code"] == "upstream_stream_error"
    assert "mock-gpt-4" in events[-1]["error"]["message"]
    with pytest.raises(openai.APIError):  # the SDK turns the event into an exception
        for _ in gateway.client().chat.completions.create(model="mock-gpt-4", messages=MSG, stream=True):
            pass
