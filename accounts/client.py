"""`Accounts`: what the ingress calls. `authorize` before any upstream call, `settle` after.

It talks to the shared `AccountsCore` (a Ray actor in the gateway, or an in-process core in
library use) and turns refusals into `AccountsError` (status, OpenAI type/code, Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from accounts import estimate
from accounts.batching import Coalescer
from accounts.errors import AccountsError, unavailable
from accounts.wire import WireClient, WireClosed

log = logging.getLogger("doka.accounts")


def _actor_gone(e: BaseException) -> bool:
    try:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, (RayActorError, ActorDiedError, ActorUnavailableError))


class Principal(BaseModel):
    """Who is calling, and the reservation to settle."""

    key_id: str | None = None
    reservation_id: str | None = None
    key_alias: str | None = None
    team: str | None = None
    user: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list, description="allowed models; empty: all")
    master: bool = False
    anonymous: bool = False
    model_requested: str | None = None
    request_id: str | None = None


P = TypeVar("P", bound=Principal)


def api_key_from_headers(headers: Any) -> str | None:
    """The key from `Authorization: Bearer ...`, `x-api-key` or `api-key` (Azure style)."""
    auth = headers.get("authorization") or headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else auth.strip()
    return headers.get("x-api-key") or headers.get("api-key")


class Accounts:
    """Thin async facade over the core (actor handle or local object)."""

    def __init__(self, backend: Any, refresh: Callable[[], Awaitable[Any]] | None = None, *,
                 batch_linger_s: float | None = None, wire: bool = False,
                 call_timeout_s: float | None = None) -> None:
        """`backend`: an AccountsCore, its Ray actor handle, or None with a `refresh` that finds it.

        `batch_linger_s`: when set, concurrent authorize and settle calls share round trips to
        the core, lingering this long while busy (accounts.batching). `wire`: those round trips
        go over the core's socket (accounts.wire) instead of Ray actor calls; both need an actor.
        `call_timeout_s`: the deadline of each hot-path call; past it the caller gets a 503
        `accounts_unavailable` (a stalled core must not hang every request).
        """
        self.backend = backend
        self._refresh = refresh
        self._batcher = (Coalescer(self._send_batch, linger_s=batch_linger_s)
                         if batch_linger_s is not None else None)
        self._use_wire = wire
        self._wire: WireClient | None = None
        self._client_id = uuid.uuid4().hex  # numbers this caller's batches (resends apply once)
        self._seq = 0
        self.call_timeout_s = call_timeout_s
        self._late: set[asyncio.Task] = set()  # answers still coming after their caller gave up

    @classmethod
    def from_config(cls, cfg: Any, *, actor: bool = True, detached: bool = True) -> "Accounts":
        """Build from the DokaConfig: the shared named actor in a Ray cluster, else in-process."""
        from accounts.actor import core_kwargs, get_or_create_actor
        from accounts.core import AccountsCore

        if actor:
            return cls(get_or_create_actor(cfg, detached=detached))
        return cls(AccountsCore(**core_kwargs(cfg)))

    async def _invoke(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.backend is None and self._refresh is not None:
            self.backend = await self._refresh()
        fn = getattr(self.backend, method)
        return await (fn.remote(*args, **kwargs) if hasattr(fn, "remote") else fn(*args, **kwargs))

    async def _raw(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a core method as is; a replaced actor is found again, an unreachable one is a 503."""
        try:
            try:
                return await self._invoke(method, *args, **kwargs)
            except Exception as e:
                if self._refresh is None or not _actor_gone(e):
                    raise
                self.backend = None  # the accounts actor was replaced (gateway restart): find the new one
                return await self._invoke(method, *args, **kwargs)
        except AccountsError:
            raise
        except Exception as e:  # the actor died or is restarting: answer 503, never 500
            log.warning("accounts backend call %s failed: %r", method, e)
            raise unavailable(f"accounts service unavailable: {type(e).__name__}") from e

    async def _send_batch(self, ops: list[Any]) -> list[Any]:
        """One batch to the core: over its socket when `wire`, else (or if that fails) a Ray call.

        A lost connection is retried once after asking the core where it listens (it may have
        been replaced); the resend keeps its number, so a core that already applied it does not
        apply it again. The Coalescer sends one batch at a time, so `_seq` needs no lock.
        """
        self._seq += 1
        seq = self._seq
        for _ in range(2 if self._use_wire else 0):
            try:
                if self._wire is None:
                    self._wire = WireClient(await self.call("serve_wire"))
                return await self._wire.batch(self._client_id, seq, ops)
            except WireClosed as e:
                log.info("accounts wire: %s; asking the core again", e)
                self._wire = None
        return await self._raw("batch", ops, self._client_id, seq)

    @staticmethod
    def _unwrap(result: dict[str, Any]) -> Any:
        if "error" in result:
            raise AccountsError.from_dict(result["error"])
        return result["ok"]

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a core method and unwrap `{"ok"}` / raise `AccountsError` for `{"error"}`."""
        return self._unwrap(await self._raw(method, *args, **kwargs))

    async def _hot(self, method: str, *args: Any, on_abandon: Callable[[asyncio.Future, int], None] | None = None,
                   batched: bool = True, **kwargs: Any) -> Any:
        """A hot-path call: alone, or with concurrent ones in one round trip (`batch_linger_s` set).

        Bounded by `call_timeout_s` (503 `accounts_unavailable` past it). The call itself keeps
        running when its caller stops waiting (deadline or cancellation): what it did still
        happens at the core, so `on_abandon(future, status)` gets it to undo (a late
        reservation; status 503 past the deadline, 499 when the caller was cancelled: the
        client left). The future's result is the core's raw `{"ok"}`/`{"error"}` answer.
        """
        if self._batcher is not None and batched:
            fut: asyncio.Future = self._batcher.enqueue((method, args, kwargs))
        else:
            fut = asyncio.ensure_future(self._raw(method, *args, **kwargs))
        try:
            return self._unwrap(await asyncio.wait_for(asyncio.shield(fut), self.call_timeout_s))
        except asyncio.TimeoutError:
            self._abandon(fut, on_abandon, 503)
            log.warning("accounts: %s got no answer within %gs", method, self.call_timeout_s)
            raise unavailable(f"accounts service did not answer within {self.call_timeout_s:g}s") from None
        except asyncio.CancelledError:
            self._abandon(fut, on_abandon, 499)
            raise

    def _abandon(self, task: asyncio.Future, on_abandon: Callable[[asyncio.Future, int], None] | None,
                 status: int) -> None:
        self._late.add(task)
        task.add_done_callback(self._late.discard)
        task.add_done_callback(lambda t: on_abandon(t, status) if on_abandon else (t.cancelled() or t.exception()))

    def _release_late(self, model: str | None, request_id: str | None) -> Callable[[asyncio.Future, int], None]:
        """Done callback for an authorize nobody waits for: settle its reservation at zero."""
        def release(task: asyncio.Future, status: int) -> None:
            if task.cancelled() or task.exception() is not None:
                return
            p = task.result().get("ok") or {}
            if p.get("reservation_id"):
                settle = asyncio.ensure_future(self._hot(
                    "settle", p["reservation_id"], p.get("key_id"), model_requested=model, model=None,
                    prompt_tokens=0, completion_tokens=0, status=status, latency_ms=None,
                    route_reason="abandoned", request_id=request_id, stream=False, cost_usd=0.0))
                self._late.add(settle)
                settle.add_done_callback(self._late.discard)
                settle.add_done_callback(lambda t: t.cancelled() or t.exception())
        return release

    # ---- the ingress seam ----
    async def authorize(
        self, api_key: str | None, model: str | None, body: dict[str, Any] | None = None,
        request_id: str | None = None, owner: str | None = None, *, calls: int = 1,
        limits: tuple[int, int] | None = None,
        as_type: type[P] = Principal,  # type: ignore[assignment]
        key_hash: str | None = None,
        **extra: Any,
    ) -> P:
        """Admit the request or raise AccountsError (401/403/429/503).

        `owner`: the caller's id when it heartbeats (`heartbeat`); if it stops, the core closes
        its open reservations with a ledger row instead of holding them for `reservation_ttl_s`.
        `calls`: upstream calls the request may make (a cascade: three), each reserved for.
        `limits`: the model's (context_window, max_output_tokens) (`accounts.limits`): the hold is
        the request's worst case within them.
        `as_type`/`extra`: a Principal subclass to build, with its own fields (the core's answer
        is trusted, so it is not validated again: this runs on every request).
        """
        if limits is not None:
            est = estimate.reservation(body, max_output_tokens=limits[1], context_window=limits[0])
        else:
            est = estimate.reservation(body)
        est *= max(1, calls)
        by_hash = {"key_hash": key_hash} if key_hash else {}  # a batch line: the key by its stored hash
        p = await self._hot("authorize", api_key, model, est, request_id, owner,
                            on_abandon=self._release_late(model, request_id), **by_hash)
        return as_type.model_construct(**p, model_requested=model, request_id=request_id, **extra)

    async def settle(
        self,
        principal: Principal,
        *,
        model: str | None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        usage: dict[str, Any] | None = None,
        status: int = 200,
        latency_ms: float | None = None,
        route_reason: str | None = None,
        stream: bool = False,
        cost_usd: float | None = None,
        request_id: str | None = None,
        client_request_id: str | None = None,
        row_uid: str | None = None,
    ) -> float:
        """Charge the actual usage (an OpenAI `usage` dict or explicit counts); returns USD cost."""
        if usage:
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        return await self._hot(
            "settle", principal.reservation_id, principal.key_id,
            model_requested=principal.model_requested, model=model, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, status=status, latency_ms=latency_ms,
            route_reason=route_reason, request_id=request_id or principal.request_id, stream=stream,
            cost_usd=cost_usd, client_request_id=client_request_id, row_uid=row_uid,
        )

    async def feedback_principal(self, api_key: str | None, request_id: str) -> Principal:
        """The caller of `POST /v1/feedback`: a valid key that made `request_id` (401/404 else)."""
        p = await self._hot("feedback_principal", api_key, request_id, batched=False)
        return Principal.model_construct(**p, request_id=request_id)

    async def batch_principal(self, api_key: str | None, models: list[str] | None = None) -> dict[str, Any]:
        """{key_id, key_hash} of the caller of the files/batches API (401/403/429 as AccountsError)."""
        return await self.call("batch_principal", api_key, models)

    async def heartbeat(self, owner: str) -> None:
        await self.call("heartbeat", owner)

    def stream_meter(self, body: dict[str, Any] | None = None) -> estimate.StreamMeter:
        return estimate.StreamMeter(body)

    async def flush(self) -> int:
        """Write the buffered ledger rows now (tests, usage queries, shutdown)."""
        return await self.call("flush")

    async def close(self) -> None:
        """Flush on gateway shutdown; for the in-process core also stop its flush loop."""
        from accounts.core import AccountsCore

        await self.call("close" if isinstance(self.backend, AccountsCore) else "flush")
