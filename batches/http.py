"""The Batch API's HTTP side for the ingress: request parsing, the caller's identity, the
stand-in request a batch line is served with, and building the core from the config.

The ingress's endpoints are one-liners into `BatchGateway`; the runner calls the ingress's
own request path (`Ingress._serve`) for each line through `LineRequest`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.errors import OpenAIError, bad_request
from batches.core import BatchCore, LineCall
from batches.files import FileStorage
from batches.store import BatchStore

log = logging.getLogger("ray.serve")
ANONYMOUS = "anonymous"  # the owner of files and batches when keys are off


class LineRequest:
    """What `Ingress._serve` reads of a request, for a batch line: no client headers (nothing a
    client sent chooses routing or spend), the line's fixed request id, and `batch_line`, which
    the accounts seam reads to authorize by the batch's stored key hash (accounts/gateway.py)."""

    def __init__(self, call: LineCall, path: str) -> None:
        self.batch_line = call
        self.headers = Headers({})
        self.scope: dict[str, Any] = {"state": {"doka_request_id": call.request_id}, "path": path, "type": "http"}


def build_core(cfg: Any) -> BatchCore:
    """The batch core on the accounts database and `batches.storage_url` (default data_dir/batches)."""
    from accounts.actor import database_url
    from accounts.db import make_engine

    url = cfg.batches.storage_url or str(cfg.data_path("batches").resolve())
    return BatchCore(BatchStore(make_engine(database_url(cfg))), FileStorage(url), cfg.batches)


def migrate(core: BatchCore) -> None:
    """Bring the schema to head (the accounts replica may be doing the same: retried)."""
    from accounts.db import migrate as run

    for attempt in range(10):
        try:
            run(core.store.engine)
            return
        except Exception as e:  # two processes creating the same tables at once on a fresh database
            if attempt == 9:
                raise
            log.info("batches: migration attempt %d failed (%r); retrying", attempt + 1, e)
            time.sleep(0.5)


Principal = Callable[[Request, "list[str] | None"], Awaitable[tuple[str, "str | None"]]]


class BatchGateway:
    """`/v1/files` and `/v1/batches` on a `BatchCore`; `principal(request, models)` -> (owner, key hash)."""

    def __init__(self, core: BatchCore, principal: Principal, model_names: set[str],
                 schema_owner: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.core, self.principal, self.model_names = core, principal, model_names
        self.schema_owner = schema_owner
        self._ready: asyncio.Task | None = None

    async def ready(self) -> None:
        """The tables exist. With keys on the accounts core migrates its database first
        (`schema_owner`), so this replica never races it creating them; then a no-op check."""
        if self._ready is None or (self._ready.done() and self._ready.exception() is not None):
            self._ready = asyncio.ensure_future(self._migrate())
        await asyncio.shield(self._ready)

    async def _migrate(self) -> None:
        if self.schema_owner is not None:
            await self.schema_owner()
        await asyncio.to_thread(migrate, self.core)

    async def run_when_ready(self, start: Callable[[], None]) -> None:
        """Start the runner once the tables exist (retried while the database is down)."""
        while True:
            try:
                await self.ready()
                break
            except Exception as e:  # accounts core or database not there yet
                log.warning("batches: not ready (%r); retrying", e)
                await asyncio.sleep(2.0)
        start()

    async def upload(self, request: Request) -> Response:
        owner, _ = await self.principal(request, None)
        await self.ready()
        limit = self.core.cfg.max_file_bytes + 65536  # the file plus its multipart envelope
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise OpenAIError(413, f"upload is larger than {self.core.cfg.max_file_bytes} bytes (batches.max_file_bytes)",
                              code="file_too_large", param="file")
        parts, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise OpenAIError(413, f"upload is larger than {self.core.cfg.max_file_bytes} bytes "
                                  "(batches.max_file_bytes)", code="file_too_large", param="file")
            parts.append(part)
        raw = b"".join(parts)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        try:
            form = await Request(request.scope, receive).form()
        except Exception as e:
            raise bad_request(f"POST /v1/files takes multipart/form-data with 'file' and 'purpose': {e}") from None
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or isinstance(upload, str):
            raise bad_request("Missing required parameter: 'file' (a JSONL file)", param="file",
                              code="missing_required_parameter")
        if not isinstance(purpose, str):
            raise bad_request("Missing required parameter: 'purpose'", param="purpose",
                              code="missing_required_parameter")
        data = await upload.read()
        return JSONResponse(await self.core.upload(owner, upload.filename or "upload.jsonl", purpose, data))

    async def list_files(self, request: Request) -> Response:
        owner, _ = await self.principal(request, None)
        await self.ready()
        q = request.query_params
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("order must be asc or desc", param="order")
        return JSONResponse(await self.core.list_files(owner, q.get("purpose"), _limit(q.get("limit"), 10000),
                                                       q.get("after"), order))

    async def get_file(self, request: Request, file_id: str) -> Response:
        from batches.core import file_object

        owner, _ = await self.principal(request, None)
        await self.ready()
        return JSONResponse(file_object(await self.core.get_file(owner, file_id)))

    async def content(self, request: Request, file_id: str) -> Response:
        owner, _ = await self.principal(request, None)
        await self.ready()
        return Response(await self.core.content(owner, file_id), media_type="application/jsonl")

    async def delete_file(self, request: Request, file_id: str) -> Response:
        owner, _ = await self.principal(request, None)
        await self.ready()
        return JSONResponse(await self.core.delete_file(owner, file_id))

    async def create(self, request: Request, body: Any) -> Response:
        owner, _ = await self.principal(request, None)  # a bad key is a 401 before anything is read
        await self.ready()
        body, parsed = await self.core.parse_create(owner, body)
        named = sorted({ln.body["model"] for ln in parsed} & self.model_names)  # chains, auto: per line
        owner, key_hash = await self.principal(request, named)  # allow-list, quota and budget, now
        return JSONResponse(await self.core.create(owner, key_hash, body, len(parsed)))

    async def list_batches(self, request: Request) -> Response:
        owner, _ = await self.principal(request, None)
        await self.ready()
        q = request.query_params
        return JSONResponse(await self.core.list_batches(owner, _limit(q.get("limit"), 100), q.get("after")))

    async def retrieve(self, request: Request, batch_id: str) -> Response:
        owner, _ = await self.principal(request, None)
        await self.ready()
        return JSONResponse(await self.core.retrieve(owner, batch_id))

    async def cancel(self, request: Request, batch_id: str) -> Response:
        owner, _ = await self.principal(request, None)
        await self.ready()
        return JSONResponse(await self.core.cancel(owner, batch_id))


def _limit(raw: str | None, most: int) -> int:
    if raw is None:
        return 20 if most == 100 else most
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise bad_request(f"limit must be an integer from 1 to {most}", param="limit")
    return int(raw)
