"""Accounts as a library, on SQLite and on a real PostgreSQL server: keys, limits, ledger, restart."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import inspect

from accounts import Accounts, AccountsError, StreamMeter
from accounts import db as accounts_db
from accounts.core import AccountsCore
from tests.accounts_support import *  # noqa: F401,F403

PRICES = {"cheap": (1e-6, 2e-6), "premium": (1e-5, 3e-5)}
BODY = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 10}
MASTER = "master-secret"


def make(url: str, batched: bool = False) -> Accounts:
    from accounts.keys import hash_key

    return Accounts(AccountsCore(url, prices=PRICES, master_key_hash=hash_key(MASTER), settle_interval_s=0.2),
                    batch_linger_s=0.002 if batched else None)


async def refused(coro) -> AccountsError:
    with pytest.raises(AccountsError) as e:
        await coro
    return e.value


async def one_call(a: Accounts, key: str, model: str = "cheap", p: int = 10, c: int = 10, **kw) -> float:
    principal = await a.authorize(key, model, BODY, request_id=kw.pop("request_id", None))
    return await a.settle(principal, model=model, usage={"prompt_tokens": p, "completion_tokens": c}, **kw)


async def test_migrations_create_schema_and_are_idempotent(db_url):
    engine = accounts_db.make_engine(db_url)
    accounts_db.migrate(engine)
    accounts_db.migrate(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"doka_keys", "doka_ledger", "doka_accounts_alembic_version"} <= tables
    engine.dispose()


async def test_ledger_records_every_request_and_usage_groups(db_url):
    a = make(db_url)
    k1 = (await a.call("generate_key", {"key_alias": "k1", "team": "t"}))["key"]
    k2 = (await a.call("generate_key", {}))["key"]
    for i in range(3):
        await one_call(a, k1, "cheap", 10, 20, latency_ms=5.0, route_reason="learned", request_id=f"r{i}")
    await one_call(a, k1, "premium", 100, 50, route_reason="explicit")
    await one_call(a, k2, "cheap", 1, 2)
    rows = await a.call("ledger")
    assert len(rows) == 5
    # /spend/logs asks newest first: `limit=1` is the latest request, not the oldest (issue 31)
    latest = await a.call("ledger", limit=1, newest_first=True)
    assert [r["id"] for r in latest] == [rows[-1]["id"]] and rows[-1]["id"] != rows[0]["id"]
    first = rows[0]
    assert (first["request_id"], first["model"], first["prompt_tokens"], first["completion_tokens"], first["status"],
            first["route_reason"], first["latency_ms"]) == ("r0", "cheap", 10, 20, 200, "learned", 5.0)
    assert first["cost_usd"] == pytest.approx(10 * 1e-6 + 20 * 2e-6)
    by_model = {r["model"]: r for r in await a.call("usage", ["model"])}
    assert by_model["cheap"]["requests"] == 4 and by_model["cheap"]["total_tokens"] == 93
    assert by_model["premium"]["cost_usd"] == pytest.approx(100 * 1e-5 + 50 * 3e-5)
    by_key = await a.call("usage", ["key", "day"])
    assert sorted(r["requests"] for r in by_key) == [1, 4]
    assert {r["day"] for r in by_key} == {datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    await a.close()


async def test_auth_matrix_library(db_url):
    a = make(db_url)
    good = (await a.call("generate_key", {"models": ["cheap"]}))["key"]
    revoked = await a.call("generate_key", {})
    await a.call("delete_key", [revoked["key"]], [])
    expired = (await a.call("generate_key", {"expires_at": datetime(2000, 1, 1)}))["key"]

    assert (await refused(a.authorize(None, "cheap"))).code == "missing_api_key"
    assert (await refused(a.authorize("sk-doka-unknown", "cheap"))).status == 401
    assert (await refused(a.authorize("not-even-a-doka-key", "cheap"))).status == 401
    assert (await refused(a.authorize(revoked["key"], "cheap"))).code == "key_revoked"
    assert (await refused(a.authorize(expired, "cheap"))).code == "key_expired"
    e = await refused(a.authorize(good, "premium"))
    assert (e.status, e.type, e.code, e.param) == (403, "permission_error", "model_not_allowed", "model")
    assert e.body()["error"]["message"]
    assert (await a.authorize(good, "cheap")).key_id
    assert (await a.authorize(MASTER, "premium")).master
    await a.close()


async def test_token_quota_exhaustion_and_restart_keeps_it(db_url):
    a = make(db_url)
    key = await a.call("generate_key", {"tokens_per_day": 100})
    for _ in range(4):  # each may use up to 25 (prompt estimate + max_tokens): the 5th does not fit in 20
        await one_call(a, key["key"], p=10, c=10)
    e = await refused(a.authorize(key["key"], "cheap", BODY))
    assert (e.status, e.code) == (429, "insufficient_quota")
    assert "up to 25 tokens, 20 of 100 left" in e.message
    assert 0 < e.retry_after <= 86400 and int(e.headers()["Retry-After"]) >= 1
    await a.close()

    b = make(db_url)  # a restarted gateway: counters are rebuilt from the ledger
    e = await refused(b.authorize(key["key"], "cheap", BODY))
    assert e.code == "insufficient_quota"
    info = await b.call("key_info", None, key["key_id"])
    assert info["usage"]["tokens_today"] == 80 and info["usage"]["tokens_this_month"] == 80
    spend = await b.call("usage", ["key"], key_id=key["key_id"])
    assert spend[0]["total_tokens"] == 80 and spend[0]["requests"] == 6  # 4 served + 2 refused rows
    await b.call("update_key", key["key"], None, {"tokens_per_day": 1000})
    await one_call(b, key["key"])  # raising the quota takes effect at once
    await b.close()


async def test_budget_rate_and_token_rate_limits(db_url):
    a = make(db_url)
    budget = (await a.call("generate_key", {"max_budget": 0.001, "budget_period": "month"}))["key"]
    await one_call(a, budget, "premium", 10, 40)  # 0.0013 USD: the one request that crosses the budget
    e = await refused(a.authorize(budget, "premium", BODY))
    assert (e.status, e.code) == (429, "budget_exceeded") and e.retry_after > 0

    rpm = (await a.call("generate_key", {"rpm_limit": 2}))["key"]
    await one_call(a, rpm)
    await one_call(a, rpm)
    e = await refused(a.authorize(rpm, "cheap", BODY))
    assert (e.status, e.code) == (429, "rate_limit_exceeded") and 0 < e.retry_after <= 60

    tpm = (await a.call("generate_key", {"tpm_limit": 30}))["key"]
    await one_call(a, tpm, p=20, c=20)
    assert (await refused(a.authorize(tpm, "cheap", BODY))).code == "rate_limit_exceeded"
    await a.close()


@pytest.mark.parametrize("batched", [False, True], ids=["one-call-each", "group-commit"])
async def test_concurrent_reservations_cap_overspend(db_url, batched):
    """40 concurrent requests, quota worth 10: reservations admit at most 10 (+1 overshoot).

    The same with the ingress's group commit (accounts.batching): the calls share round trips
    and each is still decided on its own.
    """
    a = make(db_url, batched)
    key = (await a.call("generate_key", {"tokens_per_day": 10 * 20}))["key"]
    body = {"messages": [{"role": "user", "content": "x" * 20}], "max_tokens": 10}  # reserves 20 tokens

    async def call():
        try:
            p = await a.authorize(key, "cheap", body)
        except AccountsError as e:
            return e.status
        await asyncio.sleep(0.01)
        await a.settle(p, model="cheap", usage={"prompt_tokens": 10, "completion_tokens": 10})
        return 200

    statuses = await asyncio.gather(*[call() for _ in range(40)])
    ok = statuses.count(200)
    assert 1 <= ok <= 11 and statuses.count(429) == 40 - ok
    if batched:  # 40 authorizations and `ok` settlements in a handful of round trips
        assert a._batcher.items == 40 + ok and a._batcher.batches <= 6
    rows = await a.call("ledger")
    assert sum(r["status"] == 200 for r in rows) == ok
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) == 20 * ok
    await a.close()


async def test_reservations_of_a_lost_replica_are_released_and_logged(db_url):
    """An owner that stops heartbeating (its ingress died) loses its holds; each request gets a row."""
    from accounts.estimate import reservation
    from accounts.keys import hash_key

    a = Accounts(AccountsCore(db_url, prices=PRICES, master_key_hash=hash_key(MASTER), settle_interval_s=0.1,
                              owner_lease_s=0.5))
    body = {"messages": [{"role": "user", "content": "x" * 20}], "max_tokens": 10}
    hold = reservation(body)
    key = await a.call("generate_key", {"tokens_per_day": 3 * hold})
    await a.authorize(key["key"], "cheap", body, request_id="lost-1", owner="dead-replica")
    await a.authorize(key["key"], "cheap", body, request_id="lost-2", owner="dead-replica")
    alive = await a.authorize(key["key"], "cheap", body, request_id="kept", owner="live-replica")
    assert (await refused(a.authorize(key["key"], "cheap", body))).code == "insufficient_quota"
    for _ in range(10):  # the live replica heartbeats across the lease; the dead one is silent
        await asyncio.sleep(0.1)
        await a.heartbeat("live-replica")
    info = await a.call("key_info", None, key["key_id"])
    assert info["usage"]["reserved_tokens"] == hold and info["usage"]["inflight"] == 1  # only the live hold
    rows = {r["request_id"]: r for r in await a.call("ledger", key["key_id"]) if r["request_id"]}
    assert set(rows) == {"lost-1", "lost-2"}  # (beside the 429's row)
    assert all(r["status"] == 502 and r["cost_usd"] == 0 and r["prompt_tokens"] == 0 and
               r["route_reason"].startswith("orphaned") for r in rows.values())
    await a.authorize(key["key"], "cheap", body)  # the released holds admit new requests
    await a.settle(alive, model="cheap", usage={"prompt_tokens": 5, "completion_tokens": 5})
    rows = {r["request_id"]: r for r in await a.call("ledger", key["key_id"])}
    assert rows["kept"]["status"] == 200 and rows["kept"]["completion_tokens"] == 5
    await a.close()


async def test_update_and_delete_take_effect_immediately(db_url):
    a = make(db_url)
    key = await a.call("generate_key", {})
    await a.authorize(key["key"], "premium")  # now cached
    await a.call("update_key", key["key"], None, {"models": ["cheap"]})
    assert (await refused(a.authorize(key["key"], "premium"))).status == 403
    await a.call("delete_key", [], [key["key_id"]])
    assert (await refused(a.authorize(key["key"], "cheap"))).code == "key_revoked"
    listed = await a.call("list_keys")
    assert key["key_id"] not in {k["key_id"] for k in listed}
    assert "key_hash" not in str(listed) and key["key"] not in str(listed)
    await a.close()


async def test_streams_charged_from_usage_or_delivered_text(db_url):
    a = make(db_url)
    key = (await a.call("generate_key", {}))["key"]

    m = StreamMeter(BODY)
    for word in ["Hello", " world", "!"]:
        m.observe({"choices": [{"delta": {"content": word}}]})
    m.observe({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    p = await a.authorize(key, "cheap", {**BODY, "stream": True})
    await a.settle(p, model="cheap", usage=m.usage(), stream=True)

    cut = StreamMeter(BODY)  # the client went away after 40 characters: charge those only
    cut.observe({"choices": [{"delta": {"content": "a" * 40}}]})
    p = await a.authorize(key, "cheap", {**BODY, "stream": True})
    await a.settle(p, model="cheap", usage=cut.usage(), stream=True, status=499)

    rows = await a.call("ledger")
    assert [(r["prompt_tokens"], r["completion_tokens"], r["stream"]) for r in rows] == [
        (7, 3, True), (cut.prompt_estimate, 10, True)]
    await a.close()


async def test_bad_key_settings_are_rejected():
    from pydantic import ValidationError

    from accounts.keys import GenerateKeyRequest

    with pytest.raises(ValidationError):
        GenerateKeyRequest(duration="forever")
    with pytest.raises(ValidationError):
        GenerateKeyRequest(tokens_per_day=-1)
    values = GenerateKeyRequest(duration="2d").column_values(only_set=False)
    assert values["expires_at"] > datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=1)


@pytest.mark.postgres
async def test_postgres_outage_gives_503_and_recovers_without_restart(tmp_path):
    server = PgServer()
    server.start()
    try:
        a = make(server.url())
        cached = (await a.call("generate_key", {}))["key"]
        uncached = (await a.call("generate_key", {}))["key"]
        await one_call(a, cached)
        server.stop()
        e = await refused(a.authorize(uncached, "cheap"))
        assert (e.status, e.type) == (503, "service_unavailable")
        await one_call(a, cached)  # a cached key keeps working; its ledger row waits in memory
        assert "error" in await a.backend.flush()
        server.start()
        await one_call(a, uncached)
        rows = await a.call("ledger")
        assert len(rows) == 3 and all(r["status"] == 200 for r in rows)
        await a.close()
    finally:
        server.destroy()


class StalledCore(AccountsCore):
    """A core that stops answering key checks until `resume()` (a hung actor, say)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.gate = asyncio.Event()

    async def authorize(self, *a, **kw):
        await self.gate.wait()
        return await super().authorize(*a, **kw)

    def resume(self) -> None:
        self.gate.set()


async def test_a_stalled_core_gets_a_deadline_and_late_holds_are_released(tmp_path):
    import time

    core = StalledCore(f"sqlite:///{tmp_path / 'acct.db'}", prices=PRICES, settle_interval_s=0.2)
    a = Accounts(core, call_timeout_s=0.3)
    key = await a.call("generate_key", {})
    started = time.perf_counter()
    e = await refused(a.authorize(key["key"], "cheap", BODY, request_id="timed-out"))
    waited = time.perf_counter() - started
    assert (e.status, e.code) == (503, "accounts_unavailable") and e.headers()["Retry-After"] == "1"
    assert 0.3 <= waited < 2.0, waited

    gone = asyncio.ensure_future(a.authorize(key["key"], "cheap", BODY, request_id="client-left"))
    await asyncio.sleep(0.05)
    gone.cancel()  # the client went away while its key was being checked
    core.resume()  # the core answers both late: each reservation must be released, not held
    for _ in range(100):
        if not core._reservations and not a._late:
            break
        await asyncio.sleep(0.02)
    assert core._reservations == {}
    info = await a.call("key_info", key_id=key["key_id"])
    assert info["usage"]["inflight"] == 0 and info["usage"]["reserved_tokens"] == 0
    await a.flush()
    rows = {r["request_id"]: r for r in await a.call("ledger", key["key_id"])}
    assert (rows["timed-out"]["status"], rows["client-left"]["status"]) == (503, 499)
    assert rows["timed-out"]["prompt_tokens"] == rows["client-left"]["cost_usd"] == 0
    await a.close()


async def test_key_info_while_a_new_keys_first_request_is_held_keeps_the_hold(db_url):
    """`/key/info` and a new key's first request both load the key's counters at once (an admin
    polling a key, as the cascade tests do): the request's hold must stay on the meter that is
    kept, so it counts against the quota while held and is released exactly once. Before the fix
    the later load replaced the meter: the hold vanished, its release drove the counters negative."""
    a = make(db_url)
    body = {"messages": [{"role": "user", "content": "x" * 20}], "max_tokens": 10}
    keys = [await a.call("generate_key", {"tokens_per_day": 1_000_000}) for _ in range(12)]

    async def first_request_and_info(key: dict, info_first: bool) -> tuple[dict, dict]:
        info = asyncio.ensure_future(a.call("key_info", None, key["key_id"]))
        if info_first:
            await asyncio.sleep(0)
        held = await a.authorize(key["key"], "cheap", body)
        await info
        during = (await a.call("key_info", None, key["key_id"]))["usage"]
        await a.settle(held, model="cheap", usage={"prompt_tokens": 5, "completion_tokens": 5})
        return during, (await a.call("key_info", None, key["key_id"]))["usage"]

    results = await asyncio.gather(*[first_request_and_info(k, i % 2 == 0) for i, k in enumerate(keys)])
    for during, after in results:
        assert during["inflight"] == 1 and during["reserved_tokens"] > 0, during
        assert after["inflight"] == 0 and after["reserved_tokens"] == 0 and after["tokens_today"] == 10, after
    await a.close()


def test_the_accounts_deployment_exposes_every_core_call_mixins_included():
    """The Serve deployment forwards the core's public coroutines by name; the admin, ledger and
    provider-limit calls live in mixins (accounts.core_*), and a class-only listing lost them."""
    import inspect

    from accounts.gateway import CORE_METHODS, AccountsService

    calls = {n for n, f in inspect.getmembers(AccountsCore, inspect.iscoroutinefunction) if not n.startswith("_")}
    assert {"authorize", "settle", "generate_key", "key_info", "flush", "close", "provider_admit", "console_query"} <= calls
    assert set(CORE_METHODS) == calls and all(inspect.iscoroutinefunction(getattr(AccountsService.func_or_class, n)) for n in calls)
