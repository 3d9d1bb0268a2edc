"""Provider limits through the real doka Serve app (issue 33): two ingress replicas, keys on,
the in-repo mock upstream behind LiteLLM, the unmodified `openai` SDK as the client.

Each test has a limited model of its own (limits are per model and the app is shared):
`mock-groq` (a chain's first tier and an `auto` candidate), `mock-free` (parallel: reachable
only by name), `mock-streamy` (a stream a client leaves).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import openai
import pytest

from tests.keyed_gateway import admin, keyed_gateway

MASTER = "sk-master-plimits"
APP = "doka-plimits"
PREFIX = "/plim"
GROQ_RPD = 5
FREE_RPD = 2
LA = ZoneInfo("America/Los_Angeles")


def _edit(raw: dict) -> None:
    base = next(m for m in raw["model_list"] if m["model_name"] == "mock-gpt-3.5")["litellm_params"]["api_base"]

    def model(name: str, limits: dict, parallel: bool) -> dict:
        return {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": base,
                                                       "api_key": "os.environ/MOCK_API_KEY"},
                "model_info": {"tier": "free", "timeout": 30, "parallel": parallel, "limits": limits}}

    raw["model_list"] += [
        model("mock-groq", {"rpd": GROQ_RPD, "reset_timezone": "America/Los_Angeles"}, False),
        model("mock-free", {"rpd": FREE_RPD, "rpm": 100, "reset_timezone": "America/Los_Angeles"}, True),
        model("mock-streamy", {"rpd": 100, "tpd": 1000}, True),
    ]
    raw["fallbacks"]["free-chain"] = ["mock-groq", "mock-gpt-4"]


@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, tmp_path_factory):
    yield from keyed_gateway(mock_upstream, tmp_path_factory.mktemp("plimits"), app=APP, prefix=PREFIX,
                             master=MASTER, ingress_replicas=2, edit=_edit)


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(api_key=MASTER, base_url=gw.url + "/v1", max_retries=0, timeout=60)


def ask(c: openai.OpenAI, model: str, **kw):
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8, **kw)


def remaining(gw) -> dict[tuple[str, str], float]:
    text = httpx.get(gw.url + "/metrics", timeout=30).text
    return {(m, lim): float(v) for lim, m, v in
            re.findall(r'doka_provider_limit_remaining\{limit="(\w+)",model="([\w.-]+)"\} (\S+)', text)}


def seconds_to_la_midnight() -> float:
    now = datetime.now(LA)
    nxt = (now + timedelta(days=1)).date()
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=LA).timestamp() - now.timestamp()


def test_a_chain_skips_its_used_up_tier_exactly_at_the_limit_across_two_replicas(gw):
    """20 concurrent requests to a chain whose first tier allows 5 a day, over 2 ingress replicas:
    exactly 5 reach it, the other 15 go to the next tier with the route reason saying why."""

    async def fire():
        c = openai.AsyncOpenAI(api_key=MASTER, base_url=gw.url + "/v1", max_retries=0, timeout=60)
        return await asyncio.gather(*[c.chat.completions.with_raw_response.create(
            model="free-chain", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=8) for i in range(20)])

    answers = asyncio.run(fire())
    by = [(r.headers["x-doka-model"], r.headers["x-doka-route-reason"]) for r in answers]
    assert sum(m == "mock-groq" for m, _ in by) == GROQ_RPD, by
    assert all(reason == "chain:free-chain" for m, reason in by if m == "mock-groq"), by
    skipped = [reason for m, reason in by if m != "mock-groq"]
    assert len(skipped) == 20 - GROQ_RPD
    assert set(skipped) == {"fallback:tier2;skipped=mock-groq:provider_limit_rpd"}, by
    # request N+1, on its own, goes the same way
    r = ask(client(gw), "free-chain")
    assert r.headers["x-doka-model"] == "mock-gpt-4"
    assert r.headers["x-doka-route-reason"] == "fallback:tier2;skipped=mock-groq:provider_limit_rpd"
    assert r.headers["x-doka-tiers-tried"] == "mock-gpt-4"
    rows = admin(gw, "GET", "/spend/logs", params={"key_id": "master", "limit": 100}).json()["data"]
    assert sum(row["model"] == "mock-groq" and row["status"] == 200 for row in rows) == GROQ_RPD
    assert remaining(gw)[("mock-groq", "rpd")] == 0


def test_auto_leaves_a_used_up_model_out_of_its_candidates(gw):
    """mock-groq is used up (previous test): `auto` offered it and mock-gpt-3.5 routes to the other."""
    for _ in range(3):
        r = ask(client(gw), "auto", extra_body={"doka": {"candidates": ["mock-groq", "mock-gpt-3.5"]}})
        assert r.headers["x-doka-model"] == "mock-gpt-3.5"
        assert "skipped=mock-groq:provider_limit_rpd" in r.headers["x-doka-route-reason"]
    with pytest.raises(openai.RateLimitError) as e:  # nothing left to route to
        ask(client(gw), "auto", extra_body={"doka": {"candidates": ["mock-groq"]}})
    assert e.value.response.json()["error"]["code"] == "provider_limit_exceeded"


def test_a_used_up_parallel_model_is_a_429_with_retry_after_at_the_providers_reset(gw):
    c = client(gw)
    for _ in range(FREE_RPD):
        assert ask(c, "mock-free").headers["x-doka-model"] == "mock-free"
    with pytest.raises(openai.RateLimitError) as e:
        ask(c, "mock-free")
    resp = e.value.response
    err = resp.json()["error"]
    assert (err["type"], err["code"]) == ("rate_limit_error", "provider_limit_exceeded")
    assert "mock-free rpd 2/2" in err["message"]
    assert resp.headers["x-doka-request-id"]
    # the reset is midnight in Los Angeles, not in UTC
    assert abs(int(resp.headers["retry-after"]) - seconds_to_la_midnight()) <= 30
    rows = admin(gw, "GET", "/spend/logs", params={"key_id": "master", "limit": 1}).json()["data"]
    assert rows[0]["status"] == 429 and rows[0]["model_requested"] == "mock-free"
    left = remaining(gw)
    assert left[("mock-free", "rpd")] == 0 and left[("mock-free", "rpm")] >= 100 - FREE_RPD  # a minute may roll
    assert c.models.retrieve("mock-free").model_extra["doka"]["limits"] == {
        "rpd": FREE_RPD, "rpm": 100, "reset_timezone": "America/Los_Angeles"}


def in_flight(gw, model: str, wait_s: float) -> float:
    """`doka_provider_limit_in_flight` of `model` once it is 0 or `wait_s` has passed."""
    deadline = time.time() + wait_s
    while True:
        text = httpx.get(gw.url + "/metrics", timeout=30).text
        n = float(re.search(rf'doka_provider_limit_in_flight{{model="{model}"}} (\S+)', text).group(1))
        if not n or time.time() > deadline:
            return n
        time.sleep(0.2)


def test_a_stream_the_client_leaves_settles_its_hold_exactly_once(gw):
    gw.mock.state(chunks=100, chunk_interval_ms=100)  # far longer than the client stays
    try:
        c = client(gw)
        with c.chat.completions.with_streaming_response.create(
                model="mock-streamy", messages=[{"role": "user", "content": "hi"}], max_tokens=200,
                stream=True) as r:
            assert r.headers["x-doka-model"] == "mock-streamy"
            for _ in r.iter_lines():
                break  # first chunk, then hang up
        assert in_flight(gw, "mock-streamy", 30) == 0
    finally:
        gw.mock.reset()
    left = remaining(gw)
    assert left[("mock-streamy", "rpd")] == 99  # counted once: not twice, not released as never sent
    assert left[("mock-streamy", "tpd")] < 1000  # charged what it used (the hold itself is gone: no holds open)


def test_provider_counts_survive_a_gateway_restart(gw):
    from ray import serve

    assert remaining(gw)[("mock-free", "rpd")] == 0  # used up by the parallel-model test
    serve.delete(APP)  # accounts deployment included: its counts are flushed to the database
    gw.deploy()
    with pytest.raises(openai.RateLimitError):
        ask(client(gw), "mock-free")
    left = remaining(gw)
    assert left[("mock-free", "rpd")] == 0 and left[("mock-groq", "rpd")] == 0
    assert ask(client(gw), "free-chain").headers["x-doka-model"] == "mock-gpt-4"
