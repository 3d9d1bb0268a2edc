"""The Batch API and its runner, Ray-free: what `/v1/files` and `/v1/batches` do, and how a
batch's lines are run, recorded, resumed, stopped and finalized.

The ingress hands the runner `serve_line` (one line through its own request path: key,
allow-list, quota, `auto`, fallbacks, cascades, ledger) and `busy` (interactive requests in
flight above `batches.yield_above`). Rules:
  * bounded: at most `batches.concurrency` lines in flight per replica;
  * lower priority: no new line starts while `busy()`; the runner waits `backoff_s` and looks again;
  * once: a line's result is recorded (with its batch's counters, one transaction) before it
    counts; a resumed batch skips recorded lines; its request id and ledger row id are fixed by
    batch id and position, so a line cut off mid-flight and run again is charged once;
  * quota: a line refused for quota/budget (or a key revoked) stops the batch; the lines not run
    go to the error file with code `quota_exceeded` (or `key_invalid`);
  * cancel: status `cancelling` stops new lines, in-flight ones finish and are recorded, then
    the files are written and the status becomes `cancelled`;
  * lease: a replica holds a batch by a lease it renews; a lease that runs out (replica gone)
    lets any replica resume it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from app.errors import OpenAIError, bad_request
from batches import lines as L
from batches.files import FileStorage
from batches.store import BatchStore

log = logging.getLogger("ray.serve")

# (key_hash, kind, body, request_id, batch_id, row_uid) -> (HTTP status, response or error body)
ServeLine = Callable[["LineCall"], Awaitable[tuple[int, dict[str, Any]]]]
WINDOW_S = {"24h": 24 * 3600}
STOP_CODES = {"budget_exceeded": "quota_exceeded", "insufficient_quota": "quota_exceeded",
              "key_revoked": "key_invalid", "key_expired": "key_invalid", "invalid_api_key": "key_invalid"}
FILE_ID = re.compile(r"file-[0-9a-z-]{1,80}")  # anything else is no file's id: 404 without a query
BATCH_ID = re.compile(r"batch_[0-9a-f]{1,64}")
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}


@dataclass(frozen=True)
class LineCall:
    """One line as the ingress serves it (`batch_line` on its stand-in request)."""

    batch_id: str
    key_hash: str | None
    kind: str
    body: dict[str, Any]
    request_id: str
    row_uid: str


def not_found(what: str, ident: str) -> OpenAIError:
    return OpenAIError(404, f"No {what} found with id {ident!r}", code="not_found", param="id")


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed",
            "expires_at": None, "status_details": None}


def batch_object(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "endpoint", "input_file_id", "completion_window", "status", "output_file_id",
                               "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at",
                               "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")}
    out.update(object="batch", metadata=row["metadata"], errors=row["errors"],
               request_counts={"total": row["total"], "completed": row["completed"], "failed": row["failed"]},
               usage={"input_tokens": row["input_tokens"], "input_tokens_details": {"cached_tokens": row["cached_tokens"]},
                      "output_tokens": row["output_tokens"],
                      "output_tokens_details": {"reasoning_tokens": row["reasoning_tokens"]},
                      "total_tokens": row["input_tokens"] + row["output_tokens"]})
    return out


class BatchCore:
    def __init__(self, store: BatchStore, storage: FileStorage, cfg: Any, runner_id: str | None = None) -> None:
        self.store, self.storage, self.cfg = store, storage, cfg
        self.runner_id = runner_id or uuid.uuid4().hex
        self._stopping = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._cancelled: set[str] = set()  # cancelled through this replica: seen at once (others: polled)

    @staticmethod
    async def _db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # ------------------------------------------------------------------ files
    async def upload(self, owner: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        if purpose != "batch":
            raise bad_request(f"purpose {purpose!r} is not supported; doka takes files for purpose \"batch\"",
                              param="purpose")
        if len(data) > self.cfg.max_file_bytes:
            raise OpenAIError(413, f"file is {len(data)} bytes; at most {self.cfg.max_file_bytes} "
                              "(batches.max_file_bytes)", code="file_too_large", param="file")
        try:  # the envelope of every line now, so a bad file is refused before it is stored
            L.parse_lines(data, _endpoint_of(data), self.cfg.max_lines)
        except L.LineError as e:
            raise bad_request(f"invalid batch file: {e}", param="file", code="invalid_file") from None
        fid = f"file-{_ordered_id()}"
        path = await self._db(self.storage.write, fid, data)
        row = {"id": fid, "owner": owner, "filename": filename[:512] or "upload.jsonl", "purpose": purpose,
               "bytes": len(data), "created_at": int(time.time()), "path": path, "deleted": False}
        await self._db(self.store.add_file, row)
        return file_object(row)

    async def get_file(self, owner: str, file_id: str) -> dict[str, Any]:
        row = await self._db(self.store.get_file, file_id, owner) if FILE_ID.fullmatch(file_id) else None
        if row is None:
            raise not_found("file", file_id)
        return row

    async def list_files(self, owner: str, purpose: str | None = None, limit: int = 10000, after: str | None = None,
                         order: str = "desc") -> dict[str, Any]:
        rows = await self._db(self.store.list_files, owner, purpose, limit + 1, after, order != "asc")
        data = [file_object(r) for r in rows[:limit]]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}

    async def content(self, owner: str, file_id: str) -> bytes:
        row = await self.get_file(owner, file_id)
        return await self._db(self.storage.read, row["path"])

    async def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        row = await self.get_file(owner, file_id)
        await self._db(self.store.delete_file, file_id)
        await self._db(self.storage.delete, row["path"])
        return {"id": file_id, "object": "file", "deleted": True}

    # ------------------------------------------------------------------ batches
    async def parse_create(self, owner: str, body: Any) -> tuple[dict[str, Any], list[L.Line]]:
        """The create request checked and its input file's lines (400/404 in OpenAI's shape)."""
        if not isinstance(body, dict):
            raise bad_request("Request body must be a JSON object")
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise bad_request(f"Unknown parameter(s): {unknown}", param=unknown[0], code="unknown_parameter")
        for f in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(f), str) or not body[f]:
                raise bad_request(f"Missing required parameter: {f!r}", param=f, code="missing_required_parameter")
        if body["endpoint"] not in L.ENDPOINTS:
            raise bad_request(f"endpoint {body['endpoint']!r} is not supported; use one of {', '.join(L.ENDPOINTS)}",
                              param="endpoint")
        if body["completion_window"] not in WINDOW_S:
            raise bad_request("completion_window must be \"24h\"", param="completion_window")
        md = body.get("metadata")
        if md is not None and (not isinstance(md, dict) or len(md) > 16 or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in md.items())):
            raise bad_request("metadata must be at most 16 string pairs (keys <= 64, values <= 512 characters)",
                              param="metadata")
        f = await self.get_file(owner, body["input_file_id"])
        if f["purpose"] != "batch":
            raise bad_request(f"file {f['id']!r} has purpose {f['purpose']!r}, not \"batch\"", param="input_file_id")
        data = await self._db(self.storage.read, f["path"])
        try:
            parsed = L.parse_lines(data, body["endpoint"], self.cfg.max_lines)
        except L.LineError as e:
            raise bad_request(f"invalid batch file {f['id']}: {e}", param="input_file_id", code="invalid_file") from None
        return body, parsed

    async def create(self, owner: str, key_hash: str | None, body: dict[str, Any], total: int) -> dict[str, Any]:
        now = int(time.time())
        row = {"id": f"batch_{_ordered_id()}", "owner": owner, "key_hash": key_hash,
               "input_file_id": body["input_file_id"], "endpoint": body["endpoint"],
               "completion_window": body["completion_window"], "metadata": body.get("metadata"),
               "status": "validating", "total": total, "completed": 0, "failed": 0, "created_at": now,
               "expires_at": now + WINDOW_S[body["completion_window"]]}
        return batch_object(await self._db(self.store.add_batch, row))

    async def retrieve(self, owner: str, batch_id: str) -> dict[str, Any]:
        row = await self._db(self.store.get_batch, batch_id, owner) if BATCH_ID.fullmatch(batch_id) else None
        if row is None:
            raise not_found("batch", batch_id)
        return batch_object(row)

    async def list_batches(self, owner: str, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        rows = await self._db(self.store.list_batches, owner, limit + 1, after)
        data = [batch_object(r) for r in rows[:limit]]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}

    async def cancel(self, owner: str, batch_id: str) -> dict[str, Any]:
        """`cancelling` now; the runner stops new lines, records in-flight ones, then `cancelled`."""
        b = await self.retrieve(owner, batch_id)
        if b["status"] in ("validating", "in_progress"):
            await self._db(self.store.set_batch, batch_id, ("validating", "in_progress"), status="cancelling",
                           cancelling_at=int(time.time()))
            self._cancelled.add(batch_id)
        elif b["status"] not in ("cancelling", "cancelled"):
            raise OpenAIError(409, f"batch {batch_id} is {b['status']} and cannot be cancelled",
                              code="batch_not_cancellable")
        return await self.retrieve(owner, batch_id)

    # ------------------------------------------------------------------ runner
    def start(self, serve_line: ServeLine, busy: Callable[[], bool]) -> None:
        """Run batches in the background on the running loop until `stop()`."""
        if self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._loop(serve_line, busy))

    async def stop(self, timeout: float) -> None:
        """Stop taking lines, let in-flight ones finish and be recorded, give the lease back."""
        self._stopping.set()
        if self._loop_task is not None:
            await asyncio.wait([self._loop_task], timeout=timeout)

    async def _loop(self, serve_line: ServeLine, busy: Callable[[], bool]) -> None:
        while not self._stopping.is_set():
            try:
                ran = await self.run_once(serve_line, busy)
            except Exception:  # a database hiccup: look again later, never die
                log.exception("batches: runner step failed")
                ran = False
            if not ran:
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.cfg.poll_s)
                except asyncio.TimeoutError:
                    pass

    async def run_once(self, serve_line: ServeLine, busy: Callable[[], bool] = lambda: False) -> bool:
        """Claim one unfinished batch and run it as far as it goes; False when there was none."""
        b = await self._db(self.store.claim, self.runner_id, self.cfg.lease_s)
        if b is None:
            return False
        try:
            await self._run(b, serve_line, busy)
        finally:
            await self._db(self.store.release, b["id"], self.runner_id)
        return True

    async def _run(self, b: dict[str, Any], serve_line: ServeLine, busy: Callable[[], bool]) -> None:
        bid = b["id"]
        f = await self._db(self.store.get_file, b["input_file_id"], None)
        try:
            parsed = L.parse_lines(await self._db(self.storage.read, f["path"]), b["endpoint"], self.cfg.max_lines) \
                if f is not None else None
        except (OSError, L.LineError) as e:
            parsed, why = None, str(e)
        else:
            why = "the input file was deleted"
        if parsed is None:
            await self._db(self.store.set_batch, bid, status="failed", failed_at=int(time.time()),
                           errors={"object": "list", "data": [{"code": "invalid_file", "message": why,
                                                               "param": "input_file_id", "line": None}]})
            return
        if b["status"] == "validating":
            await self._db(self.store.set_batch, bid, ("validating",), status="in_progress",
                           in_progress_at=int(time.time()))
        if b["status"] in ("validating", "in_progress"):
            await self._run_lines(bid, b, parsed, serve_line, busy)
        if self._stopping.is_set():
            return  # shutting down: another start resumes it
        await self._finish(bid, parsed)

    async def _run_lines(self, bid: str, b: dict[str, Any], parsed: list[L.Line], serve_line: ServeLine,
                         busy: Callable[[], bool]) -> None:
        done = await self._db(self.store.done_lines, bid)
        kind = L.ENDPOINTS[b["endpoint"]]
        slots = asyncio.Semaphore(self.cfg.concurrency)
        running: set[asyncio.Task] = set()
        stop: dict[str, str] = {}  # the reason new lines stop: quota_exceeded, key_invalid, cancelled, expired
        checked = 0.0
        lost: list[int] = []  # lines whose result could not be recorded
        for line in parsed:
            if line.idx in done:
                continue
            while busy() and not self._stopping.is_set():  # interactive traffic first
                await asyncio.sleep(self.cfg.backoff_s)
            await slots.acquire()
            if bid in self._cancelled:
                stop.setdefault("reason", "cancelled")
            if time.monotonic() - checked > min(0.2, self.cfg.lease_s / 3):  # cancelled elsewhere? lease renewed
                checked = time.monotonic()
                row = await self._db(self.store.get_batch, bid, None)
                if row["status"] == "cancelling":
                    stop.setdefault("reason", "cancelled")
                await self._db(self.store.renew, bid, self.runner_id, self.cfg.lease_s)
            if b["expires_at"] and time.time() > b["expires_at"]:
                stop.setdefault("reason", "expired")
            if stop or self._stopping.is_set():
                slots.release()
                break
            call = LineCall(bid, b["key_hash"], kind, dict(line.body), L.line_request_id(bid, line.idx),
                            L.line_row_uid(bid, line.idx))
            task = asyncio.ensure_future(self._one(bid, line, call, serve_line, stop))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda t: lost.append(1) if not t.cancelled() and t.exception() else None)
            task.add_done_callback(lambda _t: slots.release())
        while running:  # in-flight lines finish and are recorded (cancel, quota stop, shutdown too)
            await asyncio.wait(set(running))
        self._cancelled.discard(bid)
        if stop.get("reason"):
            await self._db(self.store.set_batch, bid, stop_code=stop["reason"])
        if lost:
            raise RuntimeError(f"{len(lost)} line(s) of {bid} could not be recorded; the batch resumes later")

    async def _one(self, bid: str, line: L.Line, call: LineCall, serve_line: ServeLine, stop: dict[str, str]) -> None:
        """Serve one line (retrying rate limits) and record it; a quota refusal stops the batch instead."""
        while True:
            try:
                status, body = await serve_line(call)
            except Exception as e:  # never lose a line to a bug: it fails, recorded
                log.exception("batches: line %s of %s raised", line.idx, bid)
                status, body = 500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error",
                                               "param": None, "code": "internal_error"}}
            code = (body.get("error") or {}).get("code") if status >= 400 and isinstance(body, dict) else None
            if code in STOP_CODES:
                stop.setdefault("reason", STOP_CODES[code])
                return  # not recorded: `_finish` writes it to the error file with the batch's stop reason
            if _transient(status, code) and not stop and not self._stopping.is_set():
                await asyncio.sleep(self.cfg.backoff_s * 20)  # rpm/tpm, a provider limit, accounts restarting
                continue
            if status == 499 and self._stopping.is_set():
                return  # cut off by shutdown: the next start runs it again (same ids, charged once)
            break
        result = L.result_line(bid, line, status, body)
        for attempt in range(5):  # the database blinked: the answer is in hand, keep it
            try:
                await self._db(self.store.record_line, bid, line.idx, line.custom_id, status >= 400, result,
                               L.line_usage(body) if status < 400 else None)
                return
            except Exception:
                if attempt == 4:
                    raise  # `_run_lines` leaves the batch unfinished; a later run serves the line again
                await asyncio.sleep(0.2 * (attempt + 1))

    async def _finish(self, bid: str, parsed: list[L.Line]) -> None:
        """Lines not run get their error line (quota, expiry); files written; final status."""
        b = await self._db(self.store.get_batch, bid, None)
        reason = b["stop_code"] or ("cancelled" if b["status"] == "cancelling" else None)
        if reason in ("quota_exceeded", "key_invalid", "expired"):
            done = await self._db(self.store.done_lines, bid)
            message = {"quota_exceeded": "the key's quota or budget ran out before this request ran",
                       "key_invalid": "the key was revoked or expired before this request ran",
                       "expired": "the batch's completion window ended before this request ran"}[reason]
            code = "batch_expired" if reason == "expired" else reason
            for line in parsed:
                if line.idx not in done:
                    await self._db(self.store.record_line, bid, line.idx, line.custom_id, True,
                                   L.result_line(bid, line, None, None, {"code": code, "message": message}))
        if reason is None and len(await self._db(self.store.done_lines, bid)) < len(parsed):
            raise RuntimeError(f"{bid}: some lines are not recorded; it resumes on a later run")
        now = int(time.time())
        if b["status"] != "finalizing":
            await self._db(self.store.set_batch, bid, status="finalizing", finalizing_at=now,
                           stop_code=reason)
        results = await self._db(self.store.result_lines, bid)
        out_id = await self._write(bid, b["owner"], "out", [ln for failed, ln in results if not failed])
        err_id = await self._write(bid, b["owner"], "err", [ln for failed, ln in results if failed])
        final = {"cancelled": ("cancelled", "cancelled_at"), "expired": ("expired", "expired_at")}.get(
            reason or "", ("completed", "completed_at"))
        await self._db(self.store.set_batch, bid, status=final[0], **{final[1]: now},
                       output_file_id=out_id, error_file_id=err_id)

    async def _write(self, bid: str, owner: str, part: str, rows: list[str]) -> str | None:
        if not rows:
            return None
        fid = f"file-{bid.removeprefix('batch_')}-{part}"  # fixed: a finalize run again rewrites the same file
        data = ("\n".join(rows) + "\n").encode()
        path = await self._db(self.storage.write, fid, data)
        if await self._db(self.store.get_file, fid, None) is None:
            await self._db(self.store.add_file, {
                "id": fid, "owner": owner, "filename": f"{bid}_{'output' if part == 'out' else 'error'}.jsonl",
                "purpose": "batch_output", "bytes": len(data), "created_at": int(time.time()), "path": path,
                "deleted": False})
        return fid


def _transient(status: int, code: str | None) -> bool:
    """A refusal that passes by itself: the line waits and is tried again (quota ones stop the batch)."""
    return (status == 429 and code not in STOP_CODES) or (status == 503 and code == "accounts_unavailable")


def _ordered_id() -> str:
    """32 hex: milliseconds first (lists sort by creation within a second), then randomness."""
    return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:20]}"


def _endpoint_of(data: bytes) -> str:
    """The url of the file's first request (each line must then name the same)."""
    for raw in data.splitlines():
        if raw.strip():
            try:
                obj = json.loads(raw)
            except ValueError:
                return "/v1/chat/completions"  # parse_lines names the bad line
            if isinstance(obj, dict) and isinstance(obj.get("url"), str) and obj["url"] in L.ENDPOINTS:
                return obj["url"]
            return "/v1/chat/completions"
    return "/v1/chat/completions"
