"""The accounts side of batches, on SQLite and a real PostgreSQL server (tests/accounts_support):
migration 0005's tables, the batch owner check (`batch_principal`), a line authorized by its
batch's stored key hash, and a line's fixed ledger row written once however often it settles."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import inspect

from accounts import Accounts, AccountsError
from accounts import db as accounts_db
from accounts.core import AccountsCore
from accounts.keys import hash_key
from app.config import BatchesConfig
from batches import lines as L
from batches.core import BatchCore, LineCall
from batches.files import FileStorage
from batches.http import migrate
from batches.store import BatchStore
from tests.accounts_support import *  # noqa: F401,F403

PRICES = {"cheap": (1e-6, 2e-6), "premium": (1e-5, 3e-5)}
BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}
MASTER = "master-secret"


def make(url: str) -> Accounts:
    return Accounts(AccountsCore(url, prices=PRICES, master_key_hash=hash_key(MASTER), settle_interval_s=0.2))


async def test_migration_0005_creates_the_batch_tables(db_url):
    engine = accounts_db.make_engine(db_url)
    accounts_db.migrate(engine)
    assert {"doka_files", "doka_batches", "doka_batch_lines"} <= set(inspect(engine).get_table_names())
    # 0006_batch_usage: the batch's token totals
    cols = {c["name"] for c in inspect(engine).get_columns("doka_batches")}
    assert {"input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"} <= cols
    engine.dispose()


async def test_batch_principal_admits_and_refuses(db_url):
    a = make(db_url)
    k = (await a.call("generate_key", {"models": ["cheap"], "max_budget": 1.0}))["key"]
    p = await a.batch_principal(k)
    assert p["key_hash"] == hash_key(k) and p["key_id"] != "master"
    assert (await a.batch_principal(k, ["cheap"]))["key_id"] == p["key_id"]
    with pytest.raises(AccountsError) as e:
        await a.batch_principal(k, ["cheap", "premium"])
    assert e.value.status == 403 and "premium" in e.value.message
    assert (await a.batch_principal(MASTER, ["premium"]))["key_id"] == "master"
    with pytest.raises(AccountsError) as e:
        await a.batch_principal("sk-doka-nope")
    assert e.value.status == 401
    broke = (await a.call("generate_key", {"max_budget": 0.0}))["key"]
    with pytest.raises(AccountsError) as e:  # no budget left: refused at create, not line by line
        await a.batch_principal(broke, [])
    assert e.value.status == 429 and e.value.code == "budget_exceeded"
    await a.close()


async def test_a_line_is_authorized_by_key_hash_and_charged_once(db_url):
    a = make(db_url)
    k = (await a.call("generate_key", {"models": ["cheap"]}))["key"]
    uid = L.line_row_uid("batch_t", 0)
    for _ in range(2):  # the line settled twice (resumed after a cut): one row
        g = await a.authorize(None, "cheap", BODY, "batch_t-0", key_hash=hash_key(k))
        assert g.key_id == (await a.batch_principal(k))["key_id"]
        await a.settle(g, model="cheap", prompt_tokens=3, completion_tokens=1, row_uid=uid,
                       client_request_id="batch_t")
    await a.flush()
    rows = [r for r in await a.call("ledger") if r["request_id"] == "batch_t-0"]
    assert len(rows) == 1 and rows[0]["client_request_id"] == "batch_t"
    with pytest.raises(AccountsError) as e:  # the allow-list still applies to a line
        await a.authorize(None, "premium", BODY, "batch_t-1", key_hash=hash_key(k))
    assert e.value.status == 403
    with pytest.raises(AccountsError) as e:  # a hash that is no key's
        await a.authorize(None, "cheap", BODY, "batch_t-2", key_hash=hash_key("sk-doka-unknown"))
    assert e.value.status == 401
    await a.close()


async def test_batch_store_runs_on_each_database(db_url, tmp_path: Path):
    engine = accounts_db.make_engine(db_url)
    core = BatchCore(BatchStore(engine), FileStorage(str(tmp_path / "files")),
                     BatchesConfig(poll_s=0.05, backoff_s=0.01), runner_id="r")
    migrate(core)
    data = b"".join(b'{"custom_id":"c%d","method":"POST","url":"/v1/chat/completions","body":{"model":"cheap"}}\n' % i
                    for i in range(5))
    f = await core.upload("k", "in.jsonl", "batch", data)
    body, parsed = await core.parse_create("k", {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                 "completion_window": "24h"})
    b = await core.create("k", "h", body, len(parsed))

    async def serve(call: LineCall) -> tuple[int, dict]:
        return 200, {"id": call.request_id, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    assert await core.run_once(serve)
    done = await core.retrieve("k", b["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    engine.dispose()
