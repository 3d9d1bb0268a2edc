"""Issue 28, the accounts core: worst-case admission, quarantined rows, the write-ahead spool,
quotas rebuilt from every charged row. Real SQLite and PostgreSQL, no Ray.
"""

from __future__ import annotations

import asyncio

import pytest

from accounts import db as accounts_db
from accounts.client import Accounts
from accounts.core import AccountsCore
from accounts.errors import AccountsError
from accounts.estimate import reservation
from accounts.keys import hash_key
from tests.accounts_support import db_url, pg_server  # noqa: F401  (fixtures)

PRICES = {"cheap": (1e-6, 2e-6)}
MASTER = "master-secret"
MSG = [{"role": "user", "content": "hello there"}]


def make(url: str, spool=None, **kw) -> Accounts:
    kw.setdefault("settle_interval_s", 0.2)
    return Accounts(AccountsCore(url, prices=PRICES, master_key_hash=hash_key(MASTER),
                                 spool_dir=str(spool) if spool is not None else None, **kw))


def test_reservation_is_the_worst_case_without_a_cap():
    body = {"messages": MSG, "max_tokens": 4096, "n": 128}
    prompt = reservation({"messages": MSG, "max_tokens": 0}) - 4096  # prompt estimate (no max_tokens: default)
    assert reservation(body) == prompt + 4096 * 128  # no 8,192 cap any more
    assert reservation({"messages": MSG}, max_output_tokens=16_384) == prompt + 16_384  # the model's own limit
    assert reservation({"messages": MSG, "max_completion_tokens": 50, "max_tokens": 9}) == prompt + 50
    # each choice is bounded by what the context leaves after the prompt
    assert reservation({"messages": MSG, "max_tokens": 10**6, "n": 2}, context_window=1000) == prompt + 2 * (1000 - prompt)


def test_model_limits_come_from_config_then_litellm_then_defaults():
    from accounts.limits import DEFAULT_CONTEXT_WINDOW, DEFAULT_MAX_OUTPUT_TOKENS, limits_of
    from app.config import ModelEntry

    known = ModelEntry(model_name="a", litellm_params={"model": "openai/gpt-4o-mini"})
    assert limits_of(known) == (128_000, 16_384)  # LiteLLM's bundled map, offline
    unknown = ModelEntry(model_name="b", litellm_params={"model": "openai/no-such-model-xyz"})
    assert limits_of(unknown) == (DEFAULT_CONTEXT_WINDOW, DEFAULT_MAX_OUTPUT_TOKENS)
    set_ = ModelEntry(model_name="c", litellm_params={"model": "openai/gpt-4o-mini"},
                      model_info={"context_window": 8000, "max_output_tokens": 1000})
    assert limits_of(set_) == (8000, 1000)  # the config wins


async def test_concurrent_worst_case_requests_never_overspend_a_small_quota(db_url):
    """Ten concurrent n=128 x 4096 requests on a 10k key: none fits, none is admitted. Then ten
    concurrent 3,000-token requests each charged their worst case: the total stays in the quota."""
    a = make(db_url)
    quota = 10_000
    key = await a.call("generate_key", {"tokens_per_day": quota})
    huge = {"messages": MSG, "max_tokens": 4096, "n": 128}

    async def try_one(body):
        try:
            return await a.authorize(key["key"], "cheap", body)
        except AccountsError as e:
            return e

    got = await asyncio.gather(*(try_one(huge) for _ in range(10)))
    assert all(isinstance(g, AccountsError) and g.status == 429 for g in got)
    assert f"may use up to {reservation(huge)} tokens" in got[0].message and "of 10000 left" in got[0].message

    body = {"messages": MSG, "max_tokens": 3000}
    worst = reservation(body)
    got = await asyncio.gather(*(try_one(body) for _ in range(10)))
    admitted = [g for g in got if not isinstance(g, AccountsError)]
    assert len(admitted) == quota // worst  # 3: what fits
    await asyncio.gather(*(a.settle(p, model="cheap", prompt_tokens=worst - 3000, completion_tokens=3000)
                           for p in admitted))
    rows = await a.call("ledger", key["key_id"])
    charged = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert charged <= quota  # never more than the quota (at most one worst case over, as asked)
    await a.close()


async def test_a_charged_499_counts_after_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    a = make(url)
    key = await a.call("generate_key", {"tokens_per_day": 100_000})
    p = await a.authorize(key["key"], "cheap", {"messages": MSG, "max_tokens": 10})
    await a.settle(p, model="cheap", prompt_tokens=40, completion_tokens=60, status=499, stream=True)
    await a.close()
    b = make(url)
    info = await b.call("key_info", None, key["key_id"])
    assert info["usage"]["tokens_today"] == 100  # a client that left was still charged
    await b.close()


@pytest.mark.postgres
async def test_a_row_the_database_refuses_is_quarantined_and_the_rest_written(pg_server, tmp_path):
    """PostgreSQL refuses a value longer than its column: that row is quarantined and counted,
    every other tenant's row of the same flush is written (the batch used to be lost)."""
    url = pg_server.create_db()
    a = make(url, spool=tmp_path / "spool", settle_interval_s=3600)  # one flush, below
    core: AccountsCore = a.backend
    keys = [await a.call("generate_key", {}) for _ in range(3)]
    grants = [(f"{tag}-{i}", await a.authorize(k["key"], "cheap", {"messages": MSG, "max_tokens": 5},
                                               request_id=f"{tag}-{i}"))
              for tag in ("ok", "ok2") for i, k in enumerate(keys)]  # every meter loaded: no flush from here
    for rid, p in grants:
        await a.settle(p, model="cheap", prompt_tokens=3, completion_tokens=4)
        if rid == "ok-2":  # a row PostgreSQL cannot store, in the middle of the batch
            core._record(keys[0]["key_id"], "m" * 5000, None, 1, 1, 0.0, None, 200, None, "bad-row", False)
    assert await a.flush() == 6
    written = {r["request_id"] for r in accounts_db.ledger_rows(core.engine)}
    assert written == {f"ok-{i}" for i in range(3)} | {f"ok2-{i}" for i in range(3)}
    stats = await a.call("stats")
    assert stats["rows_quarantined"] == 1 and stats["rows_dropped"] == 0
    assert "bad-row" in (tmp_path / "spool" / "quarantine.jsonl").read_text()
    await a.close()


async def test_acknowledged_rows_survive_a_killed_core(db_url, tmp_path):
    """A core that dies without flushing (SIGKILL: no close, no shutdown hook) loses no settled row:
    the next core replays its spool; rows already written are not written twice."""
    spool = tmp_path / "spool"
    a = make(db_url, spool=spool, settle_interval_s=3600)  # no flush before the "kill"
    key = await a.call("generate_key", {"tokens_per_day": 1_000_000})
    for i in range(5):
        p = await a.authorize(key["key"], "cheap", {"messages": MSG, "max_tokens": 5}, request_id=f"r{i}")
        await a.settle(p, model="cheap", prompt_tokens=10, completion_tokens=10)
    core: AccountsCore = a.backend
    accounts_db.insert_ledger(core.engine, core._buffer[:2])  # two made it before the kill; the spool still has them
    a.backend._flusher.cancel()  # the process is gone: nothing of it runs any more,
    core._spool._file.close()  # and the kernel closed its files (every settled row was already fsync'd)
    del a, core

    b = make(db_url, spool=spool)
    info = await b.call("key_info", None, key["key_id"])  # counters rebuilt after the replay
    assert info["usage"]["tokens_today"] == 100
    rows = await b.call("ledger", key["key_id"])
    assert sorted(r["request_id"] for r in rows) == [f"r{i}" for i in range(5)]  # each once
    assert not [p for p in spool.glob("ledger-*.jsonl") if p.stat().st_size]  # replayed, then dropped
    await b.close()


def test_a_live_core_s_open_segment_is_not_replayed_by_another(tmp_path):
    """A replica still draining holds its segment: a new core on the same spool takes only what
    no live process holds (what it takes is replayed idempotently anyway)."""
    from accounts.spool import LedgerSpool

    live = LedgerSpool(tmp_path)
    live.append({"row_uid": "u1", "created_at": __import__("datetime").datetime(2026, 1, 1)})
    live.sync()
    assert LedgerSpool(tmp_path).recover() == []  # held by `live`
    live.rotate()  # closed segments are fair game once their writer moved on
    assert [r["row_uid"] for r in LedgerSpool(tmp_path).recover()] == ["u1"]
