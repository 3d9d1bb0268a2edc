"""The gateway core without Ray: planning, fallback, timeouts, cascades, allow-lists, and every
way out of a request settling exactly once (success, error, client cancel, timeout, streams cut
short). Fake tiers and router, the real accounts core on SQLite, the real observability.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from app.errors import OpenAIError
from tests.request_core_support import (CHAT, FakeRouter, FakeTiers, Gateway, Script, core_config,
                                        http_request, read_stream)

CHEAP, MID, STRONG = "mock-mixtral", "mock-gpt-3.5", "mock-gpt-4"


def body(model: str, **extra) -> dict:
    return {"model": model, **CHAT, **extra}


async def serve(gw: Gateway, payload: dict, key: str | None = None, **kw):
    return await gw.core.serve(http_request(payload, key, **kw), "chat", _schema())


def _schema():
    from app.schemas import ChatCompletionRequest

    return ChatCompletionRequest


def test_the_core_imports_no_ray():
    code = "import sys, app.request.core; print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_explicit_model_answers_and_is_charged_once_at_its_price(tmp_path):
    gw = Gateway(core_config(tmp_path))
    key = await gw.key()
    resp = await serve(gw, body(STRONG), key)
    assert resp.status_code == 200
    answer = json.loads(resp.body)
    assert answer["model"] == STRONG  # doka's name; the provider's goes to a header
    assert resp.headers["x-doka-upstream-model"] == f"upstream/{STRONG}"
    assert resp.headers["x-doka-route-reason"] == "explicit"
    rows = await gw.rows(resp.headers["x-doka-request-id"])
    assert len(rows) == 1 and rows[0]["status"] == 200 and rows[0]["model"] == STRONG
    entry = gw.cfg.model(STRONG)
    assert rows[0]["cost_usd"] == pytest.approx(entry.cost(10, 5))
    assert await gw.reserved() == 0


async def test_a_failed_tier_falls_back_in_chain_order_and_the_router_hears_of_it(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(fail=503)
    router = FakeRouter()
    gw = Gateway(core_config(tmp_path, keyed=False), tiers, router)
    resp = await serve(gw, body("default"))
    assert resp.headers["x-doka-model"] == STRONG
    assert resp.headers["x-doka-tiers-tried"] == f"{CHEAP},{STRONG}"
    assert resp.headers["x-doka-route-reason"].startswith("fallback")
    assert [m for m, _ in tiers.calls] == [CHEAP, STRONG]
    assert router.failures == [CHEAP]


async def test_a_tier_past_its_own_timeout_is_left_for_the_next(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(delay=5)
    gw = Gateway(core_config(tmp_path, keyed=False, **{CHEAP: {"timeout": 0.2}}), tiers)
    resp = await serve(gw, body("default"))
    assert resp.headers["x-doka-model"] == STRONG
    assert [m for m, _ in tiers.calls] == [CHEAP, STRONG]


async def test_a_client_error_stops_the_chain_and_is_settled_once(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(fail=400)
    gw = Gateway(core_config(tmp_path), tiers)
    key = await gw.key()
    with pytest.raises(OpenAIError) as e:
        await serve(gw, body("default"), key)
    assert e.value.status == 400
    assert [m for m, _ in tiers.calls] == [CHEAP]  # the next tier would refuse it too
    rid = e.value.headers["x-doka-request-id"]
    rows = await gw.rows(rid)
    assert [r["status"] for r in rows] == [400]
    assert await gw.reserved() == 0


async def test_every_tier_failing_is_one_error_row(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(fail=500)
    tiers.script[STRONG] = Script(delay=5)
    gw = Gateway(core_config(tmp_path, **{STRONG: {"timeout": 0.2}}), tiers)
    key = await gw.key()
    with pytest.raises(OpenAIError) as e:
        await serve(gw, body("default"), key)
    assert e.value.status in (502, 504)
    rows = await gw.rows(e.value.headers["x-doka-request-id"])
    assert len(rows) == 1 and rows[0]["status"] == e.value.status
    assert await gw.reserved() == 0


async def test_a_client_that_leaves_mid_call_is_settled_once_as_499(tmp_path):
    tiers = FakeTiers()
    tiers.script[STRONG] = Script(delay=30)
    gw = Gateway(core_config(tmp_path), tiers)
    key = await gw.key()
    req = http_request(body(STRONG), key)
    task = asyncio.ensure_future(gw.core.serve(req, "chat", _schema()))
    while not tiers.calls:
        await asyncio.sleep(0.01)
    task.cancel()  # Serve cancels the request when its client disconnects
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = await gw.rows(req.scope["state"]["doka_request_id"])
    assert [r["status"] for r in rows] == [499]
    assert rows[0]["prompt_tokens"] == 0 and rows[0]["completion_tokens"] == 0  # nothing was delivered
    assert await gw.reserved() == 0


async def test_cascade_agreement_answers_from_the_weak_model_and_charges_both(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(text="4")
    tiers.script[MID] = Script(text="4")
    gw = Gateway(core_config(tmp_path), tiers)
    key = await gw.key()
    resp = await serve(gw, body("verified"), key)
    assert resp.headers["x-doka-model"] == CHEAP
    assert resp.headers["x-doka-route-reason"] == "cascade:agreed"
    assert STRONG not in [m for m, _ in tiers.calls]
    rows = await gw.rows(resp.headers["x-doka-request-id"])
    assert len(rows) == 1
    assert rows[0]["prompt_tokens"] == 20 and rows[0]["completion_tokens"] == 10  # weak + verifier
    cost = gw.cfg.model(CHEAP).cost(10, 5) + gw.cfg.model(MID).cost(10, 5)
    assert rows[0]["cost_usd"] == pytest.approx(cost)


async def test_cascade_disagreement_escalates_to_the_strong_chain(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(text="4")
    tiers.script[MID] = Script(text="5")
    gw = Gateway(core_config(tmp_path), tiers)
    key = await gw.key()
    resp = await serve(gw, body("verified"), key)
    assert resp.headers["x-doka-model"] == STRONG
    assert resp.headers["x-doka-route-reason"] == "cascade:escalated"
    assert resp.headers["x-doka-tiers-tried"] == f"{CHEAP},{MID},{STRONG}"
    rows = await gw.rows(resp.headers["x-doka-request-id"])
    assert len(rows) == 1 and rows[0]["prompt_tokens"] == 30  # all three calls


async def test_a_key_allow_list_narrows_chains_and_auto_and_refuses_the_rest(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(fail=503)
    router = FakeRouter(pick=STRONG)
    gw = Gateway(core_config(tmp_path), tiers, router)
    key = await gw.key(models=["default", "auto", CHEAP, MID])
    with pytest.raises(OpenAIError) as chain:  # the chain's only allowed tier failed: mock-gpt-4 is never called
        await serve(gw, body("default"), key)
    assert chain.value.status >= 500
    assert [m for m, _ in tiers.calls] == [CHEAP]
    with pytest.raises(OpenAIError) as direct:
        await serve(gw, body(STRONG), key)
    assert direct.value.status == 403
    router.pick = MID
    resp = await serve(gw, body("auto"), key)
    assert router.offered[-1] == [CHEAP, MID]  # the router chose among the key's own models
    assert resp.headers["x-doka-model"] == MID
    assert STRONG not in [m for m, _ in tiers.calls]
    rows = await gw.rows()  # the refused request is recorded by the accounts core itself
    assert sorted(r["status"] for r in rows if r["request_id"] in (chain.value.headers["x-doka-request-id"],
                                                                   resp.headers["x-doka-request-id"])) == [
        200, chain.value.status]
    assert await gw.reserved() == 0


async def test_auto_leaves_out_candidates_without_tools_for_a_tool_call(tmp_path):
    router = FakeRouter(pick=CHEAP)
    gw = Gateway(core_config(tmp_path, keyed=False, **{CHEAP: {"supports_tools": False}}), router=router)
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
    resp = await serve(gw, body("auto", tools=[tool]))
    assert CHEAP not in router.offered[-1]
    assert resp.headers["x-doka-model"] != CHEAP
    assert "filtered=" in resp.headers["x-doka-route-reason"]


async def test_a_tier_that_is_down_is_skipped_without_a_call(tmp_path):
    tiers = FakeTiers()
    gw = Gateway(core_config(tmp_path, keyed=False), tiers, down={CHEAP: "engine failed to start"})
    resp = await serve(gw, body("default"))
    assert resp.headers["x-doka-model"] == STRONG
    assert f"skipped={CHEAP}:down" in resp.headers["x-doka-route-reason"]
    assert [m for m, _ in tiers.calls] == [STRONG]


# ------------------------------------------------------------------ streams
async def test_a_whole_stream_is_settled_once_with_the_providers_usage(tmp_path):
    gw = Gateway(core_config(tmp_path))
    key = await gw.key()
    resp = await serve(gw, body(STRONG, stream=True), key)
    chunks = await read_stream(resp)
    text = b"".join(chunks)
    assert text.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in text  # the client did not ask for it; the gateway did, to charge it
    rows = await gw.rows(resp.headers["x-doka-request-id"])
    assert len(rows) == 1 and rows[0]["status"] == 200 and rows[0]["completion_tokens"] == 3
    assert await gw.reserved() == 0


async def test_a_stream_cut_off_by_the_client_is_charged_what_it_delivered(tmp_path):
    tiers = FakeTiers()
    tiers.script[STRONG] = Script(chunks=50, chunk_delay=0.02)
    gw = Gateway(core_config(tmp_path), tiers)
    key = await gw.key()
    resp = await serve(gw, body(STRONG, stream=True), key)
    got = await read_stream(resp, stop_after=3)
    assert len(got) >= 3
    rows = await gw.rows(resp.headers["x-doka-request-id"])
    assert len(rows) == 1 and rows[0]["status"] == 499
    assert 0 < rows[0]["completion_tokens"] < 50  # metered from what was delivered, no provider usage came
    for _ in range(100):  # the upstream call is closed too
        if tiers.open_streams == 0:
            break
        await asyncio.sleep(0.01)
    assert tiers.open_streams == 0
    assert await gw.reserved() == 0


async def test_a_stream_whose_body_never_started_is_settled_by_its_response(tmp_path):
    gw = Gateway(core_config(tmp_path))
    key = await gw.key()
    resp = await serve(gw, body(STRONG, stream=True), key)
    resp._on_close()  # Starlette gave up before the first body byte (client gone at the headers)
    rows = await gw.rows(resp.headers["x-doka-request-id"])
    assert [r["status"] for r in rows] == [499]
    await read_stream(resp)  # even if it ran after all, nothing is settled twice
    assert len(await gw.rows(resp.headers["x-doka-request-id"])) == 1
    assert await gw.reserved() == 0


async def test_a_stalled_stream_ends_with_an_error_event_and_one_row(tmp_path):
    tiers = FakeTiers()
    tiers.script[STRONG] = Script(chunks=5, stall_after=2)
    gw = Gateway(core_config(tmp_path, **{STRONG: {"stream_idle_timeout_s": 0.2}}), tiers)
    key = await gw.key()
    resp = await serve(gw, body(STRONG, stream=True), key)
    text = b"".join(await read_stream(resp))
    assert b'"error"' in text and b"[DONE]" not in text
    rows = await gw.rows(resp.headers["x-doka-request-id"])
    assert len(rows) == 1 and rows[0]["status"] >= 500 and rows[0]["completion_tokens"] > 0
    assert await gw.reserved() == 0


async def test_a_stream_falls_back_before_its_first_chunk_only(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(fail=502)
    gw = Gateway(core_config(tmp_path, keyed=False), tiers)
    resp = await serve(gw, body("default", stream=True))
    assert resp.headers["x-doka-model"] == STRONG
    text = b"".join(await read_stream(resp))
    assert text.count(b"data: ") == 4  # 3 chunks + [DONE]


async def test_a_client_leaving_a_cascade_is_charged_the_calls_that_answered(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(text="4")
    tiers.script[MID] = Script(text="4", delay=30)  # the verifier is still thinking when the client leaves
    gw = Gateway(core_config(tmp_path), tiers)
    key = await gw.key()
    req = http_request(body("verified"), key)
    task = asyncio.ensure_future(gw.core.serve(req, "chat", _schema()))
    while len(tiers.calls) < 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the weak call has answered by now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = await gw.rows(req.scope["state"]["doka_request_id"])
    assert len(rows) == 1 and rows[0]["status"] == 499
    assert rows[0]["prompt_tokens"] == 10 and rows[0]["completion_tokens"] == 5  # the weak call, not the verifier
    assert rows[0]["cost_usd"] == pytest.approx(gw.cfg.model(CHEAP).cost(10, 5))
    assert await gw.reserved() == 0


async def test_a_tier_at_its_provider_limit_is_skipped_and_its_hold_released(tmp_path):
    tiers = FakeTiers()
    tiers.script[CHEAP] = Script(delay=0.3)
    gw = Gateway(core_config(tmp_path, **{CHEAP: {"limits": {"rpd": 1}}}), tiers)
    key = await gw.key()
    call = asyncio.ensure_future(serve(gw, body("default"), key))
    while not tiers.calls:
        await asyncio.sleep(0.01)
    assert (await gw.accounts.accounts.call("stats"))["provider_holds"] == 1  # held while the call runs
    first = await call
    assert first.headers["x-doka-model"] == CHEAP
    second = await serve(gw, body("default"), key)  # the day's one request is used: the next tier, no call
    assert second.headers["x-doka-model"] == STRONG
    assert f"skipped={CHEAP}:provider_limit_rpd" in second.headers["x-doka-route-reason"]
    assert [m for m, _ in tiers.calls] == [CHEAP, STRONG]
    await gw.rows()  # settlements and provider-limit releases finished
    assert (await gw.accounts.accounts.call("stats"))["provider_holds"] == 0
