"""Accounts inside the Serve graph: the shared `AccountsService` deployment and the ingress seam.

`app.graph` binds `build_accounts_app(cfg)` into the ingress; the ingress builds
`GatewayAccounts(cfg, handle)` and calls `authorize(request, model, body, request_id)` before any
upstream call and `settle(grant, **outcome)` after. The deployment has exactly one replica, so
every ingress replica shares one set of counters (one event loop decides admission).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter
from ray import serve

from accounts.actor import core_kwargs, master_key
from accounts.admin_api import make_router
from accounts.client import Accounts, Principal, api_key_from_headers
from accounts.core import AccountsCore
from accounts.errors import AccountsError, unavailable
from accounts.estimate import StreamMeter, charged_usage
from accounts.request_ids import correlation_id_of
from accounts.limits import limits_by_model, widest
from accounts.provider_gate import ProviderGate

log = logging.getLogger("ray.serve")
_CURRENT: "GatewayAccounts | None" = None  # this replica's seam, for the admin routes


class AccountsService:
    """Holds the app's one AccountsCore (see accounts.core) in this replica's own process.

    Ingress replicas send key checks and settlements straight to the core's socket
    (accounts.wire; `serve_wire` says where it listens); everything else (admin calls, the
    `actor` transport, heartbeats) comes as Serve handle calls, forwarded to the core by the
    methods added below. One process instead of a replica plus a child actor doing the same job
    (~100 MB, docs/benchmarks.md). The core lives and dies with this replica (a restart rebuilds
    counters from the ledger); `__del__` flushes the ledger on graceful shutdown.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        from app.config import parse_config

        cfg = parse_config(config, source="accounts deployment")
        self._settle_wait_s = shutdown_timeout_s(cfg) - 5.0  # leave time for the final flush
        self.core = AccountsCore(**core_kwargs(cfg))

    async def check_health(self) -> None:
        """Serve health check: the core must answer (a database outage only logs)."""
        await self.core.stats()

    async def __del__(self) -> None:
        """Graceful shutdown: let open reservations settle, then flush the ledger.

        Serve stops an app's deployments in no particular order: on a redeploy this replica may
        go while ingress replicas are still draining streams it authorized. Their settlements
        come to this core, so it stays until none is open (or the shutdown budget runs out).
        """
        try:
            deadline = time.monotonic() + self._settle_wait_s
            while time.monotonic() < deadline:
                stats = await self.core.stats()
                if not stats.get("ok", {}).get("reservations"):
                    break
                await asyncio.sleep(0.2)
            await self.core.close()
        except Exception:  # already gone: nothing left to flush
            log.exception("accounts: final flush failed")


def _forward(name: str) -> Any:
    async def call(self: AccountsService, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.core, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"AccountsCore.{name}, in this process."
    return call


# Every public coroutine of the core is a method of the deployment (what Accounts calls by name).
# (getmembers, not vars: the admin, ledger and provider-limit calls come from the core's mixins)
CORE_METHODS = tuple(n for n, f in inspect.getmembers(AccountsCore, inspect.iscoroutinefunction) if not n.startswith("_"))
for _name in CORE_METHODS:
    setattr(AccountsService, _name, _forward(_name))
AccountsService = serve.deployment(name="Accounts", num_replicas=1, max_ongoing_requests=1000,
                                   ray_actor_options={"num_cpus": 0.05}, graceful_shutdown_timeout_s=30)(AccountsService)


def shutdown_timeout_s(cfg: Any) -> float:
    """Outlive the ingress's own drain (Serve floors an HAProxy-fronted ingress at 35 s)."""
    return max(float(cfg.deployments.ingress.graceful_shutdown_timeout_s), 35.0) + 15.0


def build_accounts_app(cfg: Any):
    """The accounts deployment bound to the config (what `app.graph` passes to the ingress)."""
    return AccountsService.options(graceful_shutdown_timeout_s=shutdown_timeout_s(cfg)).bind(
        cfg.model_dump(mode="json", exclude_unset=True))


class Grant(Principal):
    """A Principal plus what the stream delivered, for charging streams without usage."""

    model_config = {"arbitrary_types_allowed": True}
    meter: StreamMeter | None = None
    correlation_id: str | None = None  # the client's valid x-request-id (accounts.request_ids)
    row_uid: str | None = None  # a batch line's fixed ledger row id (batches.lines): charged once

    def observe(self, chunk: dict[str, Any]) -> None:
        if self.meter is not None:
            self.meter.observe(chunk)


def _openai_error(e: AccountsError):
    from app.errors import OpenAIError

    return OpenAIError(e.status, e.message, type=e.type, param=e.param, code=e.code, headers=e.headers())


class GatewayAccounts:
    """The ingress seam: key check and reservation before, settlement after."""

    def __init__(self, cfg: Any, handle: Any) -> None:
        global _CURRENT
        self.accounts = Accounts(handle, batch_linger_s=cfg.accounts.batch_linger_ms / 1000,
                                 wire=cfg.accounts.transport == "socket",
                                 call_timeout_s=cfg.accounts.call_timeout_s)
        self.master_key = master_key(cfg)
        self.limits = limits_by_model(cfg)  # what a request's worst case is held within
        self.widest = widest(self.limits)  # for `auto` and cascades: any model may answer
        self.owner = uuid.uuid4().hex  # this replica, as the owner of the reservations it opens
        self.settle_retry_s = cfg.accounts.settle_retry_s
        self.heartbeat_s = cfg.accounts.reservation_lease_s / 4
        limited = {m.model_name for m in cfg.model_list if m.model_info.limits is not None}
        # provider limits (accounts.provider_gate): asked per tier by the ingress's chain loop
        self.providers = ProviderGate(self.accounts, limited, self.owner, self.limits) if limited else None
        self._heartbeat: asyncio.Task | None = None
        _CURRENT = self

    async def _beat(self) -> None:
        """Keep this replica's reservations open; if the process dies the core closes them."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.accounts.heartbeat(self.owner)
            except Exception as e:  # accounts down: authorize answers 503 meanwhile; keep trying
                log.debug("accounts heartbeat failed: %r", e)

    async def authorize(self, request: Any, model: str, body: dict[str, Any], request_id: str,
                        calls: int = 1) -> Grant:
        """Raises the ingress's OpenAIError (401/403/429/503, Retry-After) on refusal.

        `calls`: how many upstream calls the request may make (a cascade's three), each reserved."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        line = getattr(request, "batch_line", None)  # a batch line (batches.core), never a client's request
        try:
            return await self.accounts.authorize(
                None if line else api_key_from_headers(request.headers), model, body, request_id, owner=self.owner,
                calls=calls, limits=tuple(self.limits.get(model, self.widest)), as_type=Grant,
                meter=StreamMeter(body) if body.get("stream") else None,
                correlation_id=line.batch_id if line else correlation_id_of(request),
                key_hash=line.key_hash if line else None, row_uid=line.row_uid if line else None)
        except AccountsError as e:
            raise _openai_error(e) from None

    async def batch_principal(self, request: Any, models: list[str] | None = None) -> dict[str, Any]:
        """{key_id, key_hash} of the files/batches API's caller; with `models`, admits a new batch."""
        try:
            return await self.accounts.batch_principal(api_key_from_headers(request.headers), models)
        except AccountsError as e:
            raise _openai_error(e) from None

    async def feedback_principal(self, request: Any, request_id: str) -> Principal:
        """Who scores `request_id`: a valid key that made it; no quota, rpm or model check."""
        try:
            return await self.accounts.feedback_principal(api_key_from_headers(request.headers), request_id)
        except AccountsError as e:
            raise _openai_error(e) from None

    async def settle(self, grant: Grant | None, **outcome: Any) -> None:
        """Charge the request; retried while the accounts core is unreachable (a replaced replica).

        The answer waits for it, so a 200 the client sees has its ledger row on the core's spool.
        One `row_uid` for every try: a try whose answer was lost is written once.
        """
        if grant is None:
            return
        delivered = charged_usage(outcome, bool(outcome.get("stream")), grant.meter)
        if delivered is not None:  # cut off before usage: what was delivered, at the model's price
            outcome.update(delivered, cost_usd=None)
        outcome.setdefault("request_id", grant.request_id)
        outcome.setdefault("client_request_id", grant.correlation_id)
        outcome.setdefault("row_uid", grant.row_uid or uuid.uuid4().hex)
        outcome.pop("model_requested", None)
        deadline = time.monotonic() + self.settle_retry_s
        wait = 0.1
        while True:
            try:
                await self.accounts.settle(grant, **outcome)
                return
            except AccountsError as e:
                if e.status != 503 or time.monotonic() + wait > deadline:
                    raise
                log.warning("accounts: settle of %s not answered (%s); retrying", grant.request_id, e.message)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 1.0)


def current() -> Accounts:
    if _CURRENT is None:
        raise unavailable("accounts are not enabled on this gateway (accounts.require_keys is false)", None)
    return _CURRENT.accounts


def _current_master() -> str | None:
    return _CURRENT.master_key if _CURRENT is not None else None


def admin_router() -> APIRouter:
    """Admin routes for the ingress app; they find this replica's accounts at request time."""
    return make_router(current, _current_master)
