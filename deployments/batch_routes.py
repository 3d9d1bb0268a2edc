"""The Batch API routes of the ingress (`/v1/files`, `/v1/batches`), as a mixin of `Ingress`.

The batch core (batches/) keeps files and batches in the accounts database and fsspec storage;
its runner sends each line through the same gateway core as an interactive request
(`GatewayCore.serve`, keys, quotas, routing and ledger included) and yields to interactive
traffic. The mixin reads what the ingress builds: `cfg`, `core`, `_accounts`, `_batches`,
`_serve` and `_read_json`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from starlette.responses import Response

from app.errors import OpenAIError
from app.request.ledger import NoAccounts
from app.request.respond import loads
from app.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from deployments.http_app import app


class BatchRoutes:
    def _batch_gateway(self) -> Any:
        """The Batch API (batches/): files and batches in the accounts database and fsspec storage."""
        from batches.http import ANONYMOUS, BatchGateway, build_core

        async def principal(request: Request, models: list[str] | None) -> tuple[str, str | None]:
            if isinstance(self._accounts, NoAccounts):
                return ANONYMOUS, None
            p = await self._accounts.batch_principal(request, models)
            return p["key_id"], p["key_hash"]

        async def schema_owner() -> None:  # the accounts core migrates the database it shares with batches
            await self._accounts.accounts.call("ready")

        return BatchGateway(build_core(self.cfg), principal, {m.model_name for m in self.cfg.model_list},
                            None if isinstance(self._accounts, NoAccounts) else schema_owner)

    def _start_batches(self) -> None:
        """Start the batch runner once this replica has an event loop (constructor or health check)."""
        if self._batches is None or getattr(self, "_batch_starter", None) is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        limit = self.cfg.batches.yield_above

        self._batch_starter = asyncio.ensure_future(self._batches.run_when_ready(
            lambda: self._batches.core.start(self._serve_line, lambda: self.core.interactive > limit)))

    async def _serve_line(self, call: Any) -> tuple[int, dict]:
        """One batch line through the core, as an already-authenticated request of the batch's key
        (batches.http.LineRequest): (status, response body or OpenAI error body)."""
        from batches.http import LineRequest

        schema = {"chat": ChatCompletionRequest, "completion": CompletionRequest, "embedding": EmbeddingRequest}[call.kind]
        try:
            resp = await self._serve(LineRequest(call, "/v1/batches"), call.kind, schema, call.body)  # type: ignore[arg-type]
            return resp.status_code, loads(resp.body)
        except OpenAIError as e:
            return e.status, e.body()

    async def _stop_batches(self) -> None:
        """Graceful shutdown: in-flight lines finish and are recorded (half the drain budget)."""
        if getattr(self, "_batches", None) is None:
            return
        starter = getattr(self, "_batch_starter", None)
        if starter is not None and not starter.done():
            starter.cancel()  # still waiting for the database: nothing runs yet
        await self._batches.core.stop(self.cfg.deployments.ingress.graceful_shutdown_timeout_s / 2)

    @app.post("/v1/files")
    async def files_upload(self, request: Request) -> Response:
        """Upload a JSONL batch input file (multipart: `file`, `purpose=batch`)."""
        return await self._batch_api().upload(request)

    @app.get("/v1/files")
    async def files_list(self, request: Request) -> Response:
        return await self._batch_api().list_files(request)

    @app.get("/v1/files/{file_id}")
    async def files_get(self, request: Request, file_id: str) -> Response:
        return await self._batch_api().get_file(request, file_id)

    @app.get("/v1/files/{file_id}/content")
    async def files_content(self, request: Request, file_id: str) -> Response:
        return await self._batch_api().content(request, file_id)

    @app.delete("/v1/files/{file_id}")
    async def files_delete(self, request: Request, file_id: str) -> Response:
        return await self._batch_api().delete_file(request, file_id)

    @app.post("/v1/batches")
    async def batches_create(self, request: Request) -> Response:
        """Create a batch from an uploaded file; its lines run in the background (batches/core.py)."""
        return await self._batch_api().create(request, await self._read_json(request))

    @app.get("/v1/batches")
    async def batches_list(self, request: Request) -> Response:
        return await self._batch_api().list_batches(request)

    @app.get("/v1/batches/{batch_id}")
    async def batches_get(self, request: Request, batch_id: str) -> Response:
        return await self._batch_api().retrieve(request, batch_id)

    @app.post("/v1/batches/{batch_id}/cancel")
    async def batches_cancel(self, request: Request, batch_id: str) -> Response:
        return await self._batch_api().cancel(request, batch_id)

    def _batch_api(self) -> Any:
        if self._batches is None:
            raise OpenAIError(404, "the Batch API is off on this gateway (batches.enabled: false)", code="not_found")
        self._start_batches()
        return self._batches
