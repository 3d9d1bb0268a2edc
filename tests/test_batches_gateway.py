"""The Batch API end to end: a real keyed doka app (ingress -> egress -> mock upstream, SQLite
and a local batches directory under a temp dir), driven by the unmodified OpenAI SDK.

Proves: a 200-line batch mixing models, `auto`, a chain, a cascade and a bad line completes;
its output and error files read back; its ledger rows (tagged with the batch id) match the output
one to one; files and batches are the creating key's; a batch naming a model the key may not
use is refused at create; and a gateway deleted mid-batch and deployed again on the same
replica killed mid-batch is replaced and finishes it without answering or charging any line twice.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter

import openai
import pytest
from openai import OpenAI

from tests.keyed_gateway import admin, keyed_gateway, new_key

MASTER = "sk-master-batches"
APP = "doka-batches-e2e"
PREFIX = "/bat"


@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, tmp_path_factory):
    data = tmp_path_factory.mktemp("batches")

    def edit(raw: dict) -> None:
        raw["batches"] = {"storage_url": str(data / "files"), "concurrency": 8, "lease_s": 3.0, "poll_s": 0.2}

    yield from keyed_gateway(mock_upstream, data, app=APP, prefix=PREFIX, master=MASTER, edit=edit)


def client(gw, key: str) -> OpenAI:
    return OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=60)


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def line(i: int, model: str, **body) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 8,
                     **body}}


def wait_done(c: OpenAI, batch_id: str, timeout: float = 180) -> object:
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        try:
            b = c.batches.retrieve(batch_id)
        except (openai.NotFoundError, openai.APIConnectionError, openai.InternalServerError) as e:
            if "not found. Ping" not in str(e) and isinstance(e, openai.NotFoundError):
                raise  # doka's own 404 (a real answer), not the proxy's while a replica is replaced
            time.sleep(0.5)
            continue
        seen.append(b.status)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish: {seen[-5:]}")


def tagged_rows(gw, key_id: str, batch_id: str) -> list[dict]:
    rows = admin(gw, "GET", "/spend/logs", params={"key_id": key_id, "limit": 100000}).json()["data"]
    return [r for r in rows if r.get("client_request_id") == batch_id]


def lines_recorded(gw, batch_id: str) -> int:
    """Lines of the batch recorded in the database (read while the gateway is down)."""
    from sqlalchemy import func, select

    from accounts.actor import database_url
    from accounts.db import make_engine
    from batches.store import lines

    engine = make_engine(database_url(gw.cfg))
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(lines).where(lines.c.batch_id == batch_id)).scalar_one()
    finally:
        engine.dispose()


def test_mixed_200_line_batch_with_the_openai_sdk(gw):
    key = new_key(gw)
    c = client(gw, key["key"])
    models = ["mock-gpt-3.5", "mock-gpt-4", "auto", "default", "verified"]
    rows = [line(i, models[i % len(models)]) for i in range(199)] + [line(199, "no-such-model")]
    f = c.files.create(file=("requests.jsonl", io.BytesIO(jsonl(rows))), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(jsonl(rows)) and f.filename == "requests.jsonl"
    assert c.files.retrieve(f.id).id == f.id and f.id in [x.id for x in c.files.list().data]
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                         metadata={"job": "nightly"})
    assert b.object == "batch" and b.status in ("validating", "in_progress") and b.metadata == {"job": "nightly"}
    assert b.request_counts.total == 200
    live = c.batches.retrieve(b.id).request_counts
    assert live.completed + live.failed <= 200  # live counts, whatever moment
    done = wait_done(c, b.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (200, 199, 1)
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
    err = [json.loads(x) for x in c.files.content(done.error_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(199)]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
    answered_by = Counter(o["response"]["body"]["model"] for o in out)
    assert len(answered_by) >= 2 and all(isinstance(m, str) and m for m in answered_by)
    assert len(err) == 1 and err[0]["custom_id"] == "req-199"
    assert err[0]["response"]["status_code"] == 404 and "no-such-model" in err[0]["response"]["body"]["error"]["message"]
    # the ledger: one row per answered line, tagged with the batch id, keyed by the line's request id
    ledger = tagged_rows(gw, key["key_id"], b.id)
    ids = [r["request_id"] for r in ledger]
    assert len(ids) == len(set(ids))
    assert {r["request_id"] for r in ledger if r["status"] == 200} == {o["response"]["request_id"] for o in out}
    assert all(r["cost_usd"] >= 0 and r["prompt_tokens"] > 0 for r in ledger if r["status"] == 200)
    # Batch.usage (the SDK's BatchUsage): the answered lines' tokens, as the output file's bodies report them
    usage = [o["response"]["body"]["usage"] for o in out]
    assert done.usage.input_tokens == sum(u["prompt_tokens"] for u in usage) > 0
    assert done.usage.output_tokens == sum(u["completion_tokens"] for u in usage) > 0
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert b.id in [x.id for x in c.batches.list().data]
    assert c.files.retrieve(done.output_file_id).purpose == "batch_output"


def test_files_and_batches_belong_to_their_key(gw):
    owner, other = new_key(gw), new_key(gw)
    c, o = client(gw, owner["key"]), client(gw, other["key"])
    f = c.files.create(file=("a.jsonl", io.BytesIO(jsonl([line(0, "mock-gpt-3.5")]))), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    for call in (lambda: o.files.retrieve(f.id), lambda: o.files.content(f.id), lambda: o.batches.retrieve(b.id),
                 lambda: o.batches.cancel(b.id), lambda: o.files.delete(f.id),
                 lambda: o.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.id not in [x.id for x in o.batches.list().data] and o.files.list().data == []
    with pytest.raises(openai.AuthenticationError):
        client(gw, "sk-doka-not-a-key").files.list()
    with pytest.raises(openai.BadRequestError) as e:  # a malformed file is refused at upload, naming the line
        c.files.create(file=("bad.jsonl", io.BytesIO(b'{"custom_id": "x"}\n')), purpose="batch")
    assert "line 1" in e.value.message
    assert c.files.delete(f.id).deleted is True
    wait_done(c, b.id)


def test_batch_naming_a_model_the_key_may_not_use_is_refused_at_create(gw):
    key = new_key(gw, models=["mock-gpt-3.5"])
    c = client(gw, key["key"])
    f = c.files.create(file=("a.jsonl", io.BytesIO(jsonl([line(0, "mock-gpt-3.5"), line(1, "mock-gpt-4")]))),
                       purpose="batch")
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert "mock-gpt-4" in e.value.message
    broke = new_key(gw, max_budget=0.0)
    cb = client(gw, broke["key"])
    f2 = cb.files.create(file=("a.jsonl", io.BytesIO(jsonl([line(0, "mock-gpt-3.5")]))), purpose="batch")
    with pytest.raises(openai.RateLimitError) as e:
        cb.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert e.value.code == "budget_exceeded"


def test_cancel_through_the_sdk(gw):
    gw.mock.reset(latency_ms=200)
    try:
        key = new_key(gw)
        c = client(gw, key["key"])
        f = c.files.create(file=("a.jsonl", io.BytesIO(jsonl([line(i, "mock-gpt-3.5") for i in range(80)]))),
                           purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.time() + 60
        while c.batches.retrieve(b.id).request_counts.completed < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert c.batches.cancel(b.id).status in ("cancelling", "cancelled")
        done = wait_done(c, b.id)
        assert done.status == "cancelled" and done.cancelled_at
        n = done.request_counts.completed
        assert 3 <= n < 80
        assert len(c.files.content(done.output_file_id).text.splitlines()) == n
        assert len(tagged_rows(gw, key["key_id"], b.id)) == n  # every line started was answered and charged
    finally:
        gw.mock.reset()


def test_gateway_killed_mid_batch_resumes_and_charges_each_line_once(gw):
    """SIGKILL the ingress replica (the runner's process) mid-batch: no drain, no lease given back.
    Serve starts a new replica on the same database and storage; once the dead one's lease runs
    out it resumes the batch, skipping recorded lines. A line cut off mid-call runs again under the
    same request id and ledger row id, so it has one answer and one charge."""
    from tests.faults_support import kill_replica, wait_replaced

    gw.mock.reset(latency_ms=150)
    try:
        key = new_key(gw)
        c = client(gw, key["key"])
        n = 240
        f = c.files.create(file=("a.jsonl", io.BytesIO(jsonl([line(i, "mock-gpt-4") for i in range(n)]))),
                           purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.time() + 60
        while c.batches.retrieve(b.id).request_counts.completed < 10 and time.time() < deadline:
            time.sleep(0.2)
        old = kill_replica(APP, "Ingress")
        recorded = lines_recorded(gw, b.id)
        assert 10 <= recorded < n, recorded
        gw.mock.state(reset_counts=True)
        wait_replaced(APP, "Ingress", old)
        done = wait_done(c, b.id)
        assert done.status == "completed" and done.request_counts.completed == n
        out = [json.loads(x) for x in c.files.content(done.output_file_id).text.splitlines()]
        assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(n))  # each answered once
        # after the kill only lines not yet recorded went upstream (plus those cut off mid-call)
        resent = gw.mock.state()["by_model"].get("gpt-4-turbo", 0)
        assert n - recorded <= resent <= n - recorded + 8, (resent, recorded)
        ledger = tagged_rows(gw, key["key_id"], b.id)
        answered = Counter(r["request_id"] for r in ledger if r["status"] == 200)
        assert answered == Counter(o["response"]["request_id"] for o in out)  # one charged row per line
        charged = Counter(r["request_id"] for r in ledger if r["prompt_tokens"] or r["completion_tokens"])
        assert max(charged.values()) == 1
    finally:
        gw.mock.reset()
