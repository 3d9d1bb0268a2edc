"""The Batch API's Ray-free core (batches/): line parsing, state transitions, resume after a
stop, quota stop, cancel, ownership and leases, on a real SQLite database (migrated by the
accounts migrations) and a real local fsspec directory. `serve_line` stands in for the
ingress's request path (tested with a real gateway in test_batches_gateway.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from app.config import BatchesConfig
from app.errors import OpenAIError
from batches import lines as L
from batches.core import BatchCore, LineCall
from batches.files import FileStorage
from batches.http import migrate
from batches.store import BatchStore


def jsonl(n: int, url: str = "/v1/chat/completions", model: str = "m1") -> bytes:
    return "\n".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url,
                                 "body": {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}})
                     for i in range(n)).encode() + b"\n"


def make_core(tmp: Path, runner: str = "r1", **cfg: Any) -> BatchCore:
    from accounts.db import make_engine

    core = BatchCore(BatchStore(make_engine(f"sqlite:///{tmp / 'doka.db'}")), FileStorage(str(tmp / "files")),
                     BatchesConfig(**{"poll_s": 0.05, "backoff_s": 0.01, "lease_s": 5.0, **cfg}), runner_id=runner)
    migrate(core)
    return core


def ok(call: LineCall) -> dict[str, Any]:
    return {"id": call.request_id, "object": "chat.completion", "model": call.body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


async def new_batch(core: BatchCore, data: bytes, owner: str = "k1") -> dict[str, Any]:
    f = await core.upload(owner, "in.jsonl", "batch", data)
    body, parsed = await core.parse_create(owner, {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                   "completion_window": "24h", "metadata": {"job": "t"}})
    return await core.create(owner, "hash", body, len(parsed))


async def output(core: BatchCore, b: dict[str, Any], which: str = "output_file_id") -> list[dict[str, Any]]:
    if not b[which]:
        return []
    return [json.loads(x) for x in (await core.content(b["owner"] if "owner" in b else "k1", b[which])).splitlines()]


# ---------------------------------------------------------------- lines
def test_parse_lines_accepts_good_file_and_names_bad_lines() -> None:
    parsed = L.parse_lines(jsonl(3) + b"\n\n", "/v1/chat/completions", 10)
    assert [(p.idx, p.custom_id, p.body["model"]) for p in parsed] == [(0, "req-0", "m1"), (1, "req-1", "m1"),
                                                                        (2, "req-2", "m1")]
    good = json.loads(jsonl(1).splitlines()[0])
    cases = {
        b"{not json": "line 1 is not valid JSON",
        b"[1]": "line 1 must be a JSON object",
        jsonl(2).replace(b"req-1", b"req-0"): "line 2: custom_id 'req-0' appears twice",
        json.dumps({**good, "url": "/v1/embeddings"}).encode(): "differs from the batch's endpoint",
        json.dumps({**good, "method": "GET"}).encode(): "method must be",
        json.dumps({**good, "body": {"messages": []}}).encode(): "body must be an object with a \"model\"",
        json.dumps({**good, "body": {**good["body"], "stream": True}}).encode(): "cannot stream",
        json.dumps({**good, "extra": 1}).encode(): "unknown field(s) ['extra']",
        b"\n \n": "holds no requests",
    }
    for data, message in cases.items():
        with pytest.raises(L.LineError, match=None) as e:
            L.parse_lines(data, "/v1/chat/completions", 10)
        assert message in str(e.value), (data, str(e.value))
    with pytest.raises(L.LineError, match="more than 2 requests"):
        L.parse_lines(jsonl(3), "/v1/chat/completions", 2)
    with pytest.raises(L.LineError, match="not supported"):
        L.parse_lines(jsonl(1), "/v1/images", 10)


def test_line_ids_are_fixed_by_batch_and_position() -> None:
    assert L.line_request_id("batch_x", 7) == L.line_request_id("batch_x", 7) == "batch_x-7"
    assert L.line_row_uid("batch_x", 7) == L.line_row_uid("batch_x", 7) != L.line_row_uid("batch_x", 8)
    assert len(L.line_row_uid("batch_x", 7)) == 32  # the ledger's row_uid column


# ---------------------------------------------------------------- files and batches API
def test_upload_validates_and_scopes_files_to_their_owner(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path, max_file_bytes=10_000)
        f = await core.upload("k1", "in.jsonl", "batch", jsonl(2))
        assert f["object"] == "file" and f["purpose"] == "batch" and f["bytes"] == len(jsonl(2))
        assert (await core.content("k1", f["id"])) == jsonl(2)
        assert [x["id"] for x in (await core.list_files("k1"))["data"]] == [f["id"]]
        assert (await core.list_files("k2"))["data"] == []
        for call in (core.get_file("k2", f["id"]), core.content("k2", f["id"]), core.delete_file("k2", f["id"])):
            with pytest.raises(OpenAIError) as e:
                await call
            assert e.value.status == 404
        with pytest.raises(OpenAIError) as e:
            await core.upload("k1", "x", "fine-tune", jsonl(1))
        assert e.value.status == 400 and e.value.param == "purpose"
        with pytest.raises(OpenAIError) as e:
            await core.upload("k1", "x", "batch", jsonl(200))
        assert e.value.status == 413
        with pytest.raises(OpenAIError) as e:
            await core.upload("k1", "x", "batch", b"{oops\n")
        assert e.value.status == 400 and "line 1 is not valid JSON" in e.value.message
        assert (await core.delete_file("k1", f["id"]))["deleted"] is True
        with pytest.raises(OpenAIError):
            await core.get_file("k1", f["id"])

    asyncio.run(go())


def test_create_checks_its_request(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path)
        f = await core.upload("k1", "in.jsonl", "batch", jsonl(2))
        base = {"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        for bad, status, param in (({**base, "completion_window": "1h"}, 400, "completion_window"),
                                   ({**base, "endpoint": "/v1/images"}, 400, "endpoint"),
                                   ({**base, "endpoint": "/v1/embeddings"}, 400, "input_file_id"),
                                   ({**base, "nope": 1}, 400, "nope"),
                                   ({**base, "metadata": {"k": 1}}, 400, "metadata"),
                                   ({**base, "input_file_id": "file-missing"}, 404, "id")):
            with pytest.raises(OpenAIError) as e:
                await core.parse_create("k1", bad)
            assert (e.value.status, e.value.param) == (status, param), e.value.message
        with pytest.raises(OpenAIError) as e:  # another key's file
            await core.parse_create("k2", base)
        assert e.value.status == 404

    asyncio.run(go())


# ---------------------------------------------------------------- runner
def test_batch_runs_to_completion_with_output_and_error_files(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path, concurrency=4)
        b = await new_batch(core, jsonl(10))
        assert b["status"] == "validating" and b["request_counts"] == {"total": 10, "completed": 0, "failed": 0}
        assert b["usage"]["total_tokens"] == 0
        seen: list[str] = []

        async def serve(call: LineCall) -> tuple[int, dict]:
            seen.append(call.request_id)
            live = await core.retrieve("k1", call.batch_id)
            assert live["status"] == "in_progress"
            if call.request_id.endswith("-3"):
                return 404, {"error": {"message": "no such model", "type": "invalid_request_error",
                                       "param": "model", "code": "model_not_found"}}
            return 200, ok(call)

        assert await core.run_once(serve) is True
        assert await core.run_once(serve) is False  # nothing left
        done = await core.retrieve("k1", b["id"])
        assert done["status"] == "completed" and done["completed_at"] and done["finalizing_at"]
        assert done["request_counts"] == {"total": 10, "completed": 9, "failed": 1}
        # usage: the 9 answered lines' tokens (3 in, 1 out each); the 404 line adds nothing
        assert done["usage"] == {"input_tokens": 27, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 9,
                                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 36}
        assert done["metadata"] == {"job": "t"}
        assert sorted(seen) == sorted(f"{b['id']}-{i}" for i in range(10))
        out = await output(core, done)
        assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(10) if i != 3]  # input order
        assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
        assert out[0]["response"]["request_id"] == f"{b['id']}-0" and out[0]["id"].startswith("batch_req_")
        err = await output(core, done, "error_file_id")
        assert [(e["custom_id"], e["response"]["status_code"], e["response"]["body"]["error"]["code"])
                for e in err] == [("req-3", 404, "model_not_found")]
        assert (await core.get_file("k1", done["output_file_id"]))["purpose"] == "batch_output"

    asyncio.run(go())


def test_resume_after_stop_runs_no_line_twice(tmp_path: Path) -> None:
    async def go() -> None:
        first = make_core(tmp_path, runner="a", concurrency=3)
        b = await new_batch(first, jsonl(30))
        calls: dict[str, int] = {}
        gate = asyncio.Event()

        async def serve(call: LineCall) -> tuple[int, dict]:
            calls[call.request_id] = calls.get(call.request_id, 0) + 1
            if len(calls) == 8:
                first._stopping.set()  # the replica is shutting down: in-flight lines still finish
                gate.set()
            await asyncio.sleep(0.01)
            return 200, ok(call)

        await first.run_once(serve)
        mid = await first.retrieve("k1", b["id"])
        assert mid["status"] == "in_progress" and 8 <= mid["request_counts"]["completed"] < 30
        # a fresh replica (another runner id, same database and storage) resumes at once: the lease was given back
        second = make_core(tmp_path, runner="b", concurrency=3)
        assert await second.run_once(serve) is True
        done = await second.retrieve("k1", b["id"])
        assert done["status"] == "completed"
        assert done["request_counts"] == {"total": 30, "completed": 30, "failed": 0}
        assert calls == {f"{b['id']}-{i}": 1 for i in range(30)}
        assert len(await output(second, done)) == 30

    asyncio.run(go())


def test_lease_keeps_a_batch_with_one_runner_until_it_runs_out(tmp_path: Path) -> None:
    core = make_core(tmp_path, lease_s=0.3)
    b = asyncio.run(new_batch(core, jsonl(1)))
    assert core.store.claim("a", 0.3)["id"] == b["id"]
    assert core.store.claim("b", 0.3) is None  # held by a
    import time

    time.sleep(0.35)  # a died: its lease ran out
    assert core.store.claim("b", 0.3)["id"] == b["id"]
    assert core.store.record_line(b["id"], 0, "req-0", False, "{}") is True
    assert core.store.record_line(b["id"], 0, "req-0", False, "{}") is False  # recorded once, counted once
    assert core.store.get_batch(b["id"], None)["completed"] == 1


def test_quota_stop_marks_the_rest_in_the_error_file(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path, concurrency=1)
        b = await new_batch(core, jsonl(12))
        served = 0

        async def serve(call: LineCall) -> tuple[int, dict]:
            nonlocal served
            if served >= 5:
                return 429, {"error": {"message": "budget exceeded", "type": "rate_limit_error", "param": None,
                                       "code": "budget_exceeded"}}
            served += 1
            return 200, ok(call)

        await core.run_once(serve)
        done = await core.retrieve("k1", b["id"])
        assert done["status"] == "completed"
        assert done["request_counts"] == {"total": 12, "completed": 5, "failed": 7}
        err = await output(core, done, "error_file_id")
        assert [e["custom_id"] for e in err] == [f"req-{i}" for i in range(5, 12)]
        assert all(e["response"] is None and e["error"]["code"] == "quota_exceeded" for e in err)

    asyncio.run(go())


def test_rate_limited_lines_wait_and_run(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path, concurrency=2)
        b = await new_batch(core, jsonl(4))
        refused = 0

        async def serve(call: LineCall) -> tuple[int, dict]:
            nonlocal refused
            if refused < 3:
                refused += 1
                return 429, {"error": {"message": "rpm", "type": "rate_limit_error", "param": None,
                                       "code": "rate_limit_exceeded"}}
            return 200, ok(call)

        await core.run_once(serve)
        assert (await core.retrieve("k1", b["id"]))["request_counts"] == {"total": 4, "completed": 4, "failed": 0}

    asyncio.run(go())


def test_cancel_stops_new_lines_and_records_in_flight_ones(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path, concurrency=2)
        b = await new_batch(core, jsonl(40))
        served: list[str] = []

        async def serve(call: LineCall) -> tuple[int, dict]:
            served.append(call.request_id)
            if len(served) == 4:
                c = await core.cancel("k1", call.batch_id)
                assert c["status"] == "cancelling" and c["cancelling_at"]
            await asyncio.sleep(0.02)
            return 200, ok(call)

        await core.run_once(serve)
        done = await core.retrieve("k1", b["id"])
        assert done["status"] == "cancelled" and done["cancelled_at"]
        n = done["request_counts"]["completed"]
        assert n == len(served) and 4 <= n < 40  # every line started was recorded, the rest never ran
        assert len(await output(core, done)) == n
        with pytest.raises(OpenAIError) as e:
            await core.cancel("k2", b["id"])
        assert e.value.status == 404  # another key's batch

    asyncio.run(go())


def test_cancel_before_it_runs_and_completed_batches_cannot_be_cancelled(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path)
        b = await new_batch(core, jsonl(3))
        assert (await core.cancel("k1", b["id"]))["status"] == "cancelling"

        async def serve(call: LineCall) -> tuple[int, dict]:
            raise AssertionError("a cancelled batch runs no line")

        await core.run_once(serve)
        done = await core.retrieve("k1", b["id"])
        assert done["status"] == "cancelled" and done["output_file_id"] is None
        b2 = await new_batch(core, jsonl(1))

        async def serve2(call: LineCall) -> tuple[int, dict]:
            return 200, ok(call)

        await core.run_once(serve2)
        with pytest.raises(OpenAIError) as e:
            await core.cancel("k1", b2["id"])
        assert e.value.status == 409
        listed = await core.list_batches("k1")
        assert [x["id"] for x in listed["data"]] == [b2["id"], b["id"]] and listed["has_more"] is False
        assert (await core.list_batches("k2"))["data"] == []

    asyncio.run(go())


def test_runner_yields_while_interactive_traffic_is_busy(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path, concurrency=4)
        b = await new_batch(core, jsonl(5))
        busy = {"on": True}
        started_while_busy: list[str] = []

        async def serve(call: LineCall) -> tuple[int, dict]:
            if busy["on"]:
                started_while_busy.append(call.request_id)
            return 200, ok(call)

        async def quiet_later() -> None:
            await asyncio.sleep(0.3)
            busy["on"] = False

        t = asyncio.ensure_future(quiet_later())
        await core.run_once(serve, lambda: busy["on"])
        await t
        assert started_while_busy == []
        assert (await core.retrieve("k1", b["id"]))["status"] == "completed"

    asyncio.run(go())


def test_a_line_that_raises_is_recorded_as_failed(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path)
        b = await new_batch(core, jsonl(2))

        async def serve(call: LineCall) -> tuple[int, dict]:
            if call.request_id.endswith("-1"):
                raise RuntimeError("boom")
            return 200, ok(call)

        await core.run_once(serve)
        done = await core.retrieve("k1", b["id"])
        assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
        err = await output(core, done, "error_file_id")
        assert err[0]["response"]["status_code"] == 500 and "boom" in err[0]["response"]["body"]["error"]["message"]

    asyncio.run(go())


def test_a_line_whose_result_cannot_be_recorded_is_run_again_not_lost(tmp_path: Path) -> None:
    async def go() -> None:
        core = make_core(tmp_path, concurrency=1)
        b = await new_batch(core, jsonl(3))
        real = core.store.record_line
        broken = {"left": 5}  # every try of one line fails: the database is gone for it

        def flaky(batch_id: str, idx: int, *a: Any) -> bool:
            if idx == 1 and broken["left"] > 0:
                broken["left"] -= 1
                raise OSError("disk I/O error")
            return real(batch_id, idx, *a)

        core.store.record_line = flaky  # type: ignore[method-assign]
        calls: list[str] = []

        async def serve(call: LineCall) -> tuple[int, dict]:
            calls.append(call.request_id)
            return 200, ok(call)

        with pytest.raises(RuntimeError, match="could not be recorded"):
            await core.run_once(serve)
        mid = await core.retrieve("k1", b["id"])
        assert mid["status"] == "in_progress" and mid["request_counts"]["completed"] == 2  # not finalized
        assert await core.run_once(serve) is True  # the next run serves the unrecorded line again
        done = await core.retrieve("k1", b["id"])
        assert done["status"] == "completed" and done["request_counts"]["completed"] == 3
        assert calls.count(f"{b['id']}-1") == 2 and len(calls) == 4  # same request id: one ledger row

    asyncio.run(go())
