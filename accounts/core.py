"""The shared accounts state: key cache, per-key counters, reservations and the ledger buffer.

One `AccountsCore` serves every ingress replica (it runs as one named Ray actor, see
`accounts.actor`), so admission is decided in a single event loop with no await between the
check and the reservation. The database is touched only on a key-cache miss, by the
periodic ledger flush, and by the admin API.

This module holds the state and the hot path (key lookup, meters, authorize, settle); the
ledger flush and sweep (`core_ledger`), the admin API (`core_admin`) and the provider-limit
calls (`core_provider`) are mixins over the same state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from accounts import db
from accounts.core_admin import KeyAdmin
from accounts.core_ledger import MAX_BUFFER, LedgerWriter
from accounts.core_provider import ProviderLimitCalls
from accounts.errors import AccountsError, err, forbidden, not_found, ok, unauthorized
from accounts.keys import KEY_PREFIX, hash_key
from accounts.meter import KeyMeter, Reservation, period_start, to_naive_utc
from accounts.provider_limits import ProviderLimiter
from accounts.spool import LedgerSpool

log = logging.getLogger("doka.accounts")
MASTER_ID = "master"
MAX_CACHED_KEYS = 100_000


def _node_ip() -> str:
    """This node's IP in a Ray cluster (where other nodes reach this actor), else loopback."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # pragma: no cover - outside Ray
        pass
    return "127.0.0.1"


def _refuse_unusable(key: dict[str, Any]) -> None:
    """401 for a revoked or expired key (the key check and the feedback principal alike)."""
    if key["revoked_at"] is not None:
        raise unauthorized("API key has been revoked", "key_revoked")
    if key["expires_at"] is not None and key["expires_at"] <= to_naive_utc(time.time()):
        raise unauthorized("API key has expired", "key_expired")

class AccountsCore(LedgerWriter, KeyAdmin, ProviderLimitCalls):
    """Async, single-loop owner of all accounts state. Methods return `{"ok"}`/`{"error"}` dicts."""

    def __init__(
        self,
        database_url: str,
        *,
        master_key_hash: str | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
        require_keys: bool = True,
        settle_interval_s: float = 1.0,
        key_ttl_s: float = 5.0,
        reservation_ttl_s: float = 600.0,
        owner_lease_s: float = 30.0,
        spool_dir: str | None = None,
        provider_limits: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.url = db.normalize_url(database_url)
        self.engine = db.make_engine(self.url)
        self.master_key_hash = master_key_hash
        self.prices = prices or {}
        self.max_price = max((max(p) for p in self.prices.values()), default=0.0)
        self.require_keys = require_keys
        self.settle_interval_s = settle_interval_s
        self.key_ttl_s = key_ttl_s
        self.reservation_ttl_s = reservation_ttl_s
        self.owner_lease_s = owner_lease_s
        self._owners: dict[str, float] = {}  # ingress replica -> last heard of (monotonic)
        self._migrated = False
        self._keys: dict[str, tuple[dict[str, Any] | None, float]] = {}  # hash -> (row, loaded at)
        self._meters: dict[str, KeyMeter] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._reservations: dict[str, Reservation] = {}
        self._buffer: list[dict[str, Any]] = []
        self._flusher: asyncio.Task | None = None
        self._flush_lock: asyncio.Lock | None = None
        self.flush_failures = 0
        self.rows_quarantined = 0  # refused by the database (kept in the spool's quarantine file)
        self.rows_dropped = 0  # past MAX_BUFFER while the database was down
        self._spool: LedgerSpool | None = None
        if spool_dir is not None:  # rows a killed process acknowledged come back first
            self._spool = LedgerSpool(spool_dir)
            self._buffer = self._spool.recover()
            if self._buffer:
                log.warning("accounts: %d ledger rows recovered from the spool", len(self._buffer))
        # provider limits per model (accounts.provider_limits): counted here, for every replica
        self.plimits = ProviderLimiter(provider_limits or {})
        self._plimits_loaded = not self.plimits.limits
        self._plimits_loading: asyncio.Future | None = None
        self._closed = False
        self._wire: Any = None  # accounts.wire.WireServer, started by serve_wire
        self._last_batch: dict[str, tuple[int | None, asyncio.Future]] = {}  # client -> (seq, its answers)

    # ---------------------------------------------------------------- plumbing
    async def serve_wire(self) -> dict[str, Any]:
        """Start (once) the socket the ingress sends its batches over (accounts.wire); its address.

        It listens on this node's IP, so ingress replicas on other nodes reach it too.
        """
        from accounts.wire import WireServer

        if self._wire is None:
            self._wire = WireServer(self.batch, host=_node_ip())
        return ok(await self._wire.start())

    async def heartbeat(self, owner: str) -> dict[str, Any]:
        """An ingress replica is alive: its open reservations stay open (see _sweep_reservations)."""
        self._owners[owner] = time.monotonic()
        return ok(True)

    async def ready(self) -> dict[str, Any]:
        """Migrate now (start-up); returns an error dict when the database is down."""
        try:
            await self._db(lambda engine: None)
            return ok(True)
        except AccountsError as e:
            return err(e)
    # ---------------------------------------------------------------- keys & meters
    async def _lookup(self, key_hash: str) -> dict[str, Any] | None:
        cached = self._keys.get(key_hash)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.key_ttl_s:
            return cached[0]
        fut = self._loading.get(key_hash)
        if fut is not None:  # one DB read per key however many requests wait on it
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._loading[key_hash] = fut
        try:
            row = await self._db(db.get_key, key_hash=key_hash)
            if row is not None and row["id"] not in self._meters:
                await self._build_meter(row)
            if len(self._keys) >= MAX_CACHED_KEYS:  # bounded: unknown keys are cached too (no DB flood)
                self._keys.clear()
            self._keys[key_hash] = (row, time.monotonic())
            fut.set_result(row)
            return row
        except BaseException as e:
            if cached is not None and isinstance(e, AccountsError):  # stale beats down
                fut.set_result(cached[0])
                return cached[0]
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._loading.pop(key_hash, None)

    async def _build_meter(self, row: dict[str, Any], keep: KeyMeter | None = None) -> KeyMeter:
        """Counters from the ledger (flushed first), so a restart resets no quota."""
        await self.flush()
        now = time.time()
        dt = to_naive_utc(now)
        starts = [period_start("day", dt), period_start("month", dt), period_start(row["budget_period"], dt)]
        (day, _, _), (month, _, _), (_, cost, _) = await self._db(db.key_spend_since, row["id"], starts)
        events = await self._db(db.recent_events, row["id"], to_naive_utc(now - 60))
        meter = KeyMeter.rebuild(row["budget_period"], now, day, month, cost, events)
        current = self._meters.get(row["id"])  # no await from here on: what is read is what is replaced
        if keep is None and current is not None:
            return current  # built meanwhile (a request's lookup and /key/info at once): its holds are live
        held = current if current is not None else keep
        if held is not None:  # in-flight reservations stay counted (and are released on this meter)
            meter.reserved_tokens, meter.reserved_cost, meter.inflight = held.reserved_tokens, held.reserved_cost, held.inflight
        self._meters[row["id"]] = meter
        return meter

    def _invalidate(self, row: dict[str, Any] | None) -> None:
        if row is not None:
            self._keys.pop(row["key_hash"], None)

    def _price(self, model: str | None) -> float:
        p = self.prices.get(model or "")
        return max(p) if p else self.max_price

    # ---------------------------------------------------------------- hot path
    async def authorize(
        self, api_key: str | None, model: str | None, est_tokens: int, request_id: str | None = None,
        owner: str | None = None, key_hash: str | None = None,
    ) -> dict[str, Any]:
        """Admit or refuse one request; on admission reserve `est_tokens` against every limit.

        `owner` names the ingress replica that will settle it; it must keep calling `heartbeat`.
        `key_hash`: the key by its stored hash instead of `api_key` (a batch line: batches keep
        the hash of the key that created them, never the key; never taken from a client).
        """
        await self._start()
        decided = self._authorize_now(api_key, model, est_tokens, request_id, owner, key_hash=key_hash)
        return decided if decided is not None else await self._authorize_loaded(
            api_key, model, est_tokens, request_id, owner, key_hash)

    async def _authorize_loaded(
        self, api_key: str | None, model: str | None, est_tokens: int, request_id: str | None = None,
        owner: str | None = None, key_hash: str | None = None,
    ) -> dict[str, Any]:
        """`_authorize_now` once the key's row (and meter) are loaded."""
        try:  # the key is not cached: one database read (shared by every request waiting on it)
            row = await self._lookup(key_hash or hash_key(api_key or ""))
            if row is not None and row["id"] not in self._meters:
                await self._build_meter(row)
        except AccountsError as e:
            return err(e)
        return self._authorize_now(api_key, model, est_tokens, request_id, owner, row=(row,),  # type: ignore[return-value]
                                   key_hash=key_hash)

    async def _usable_key(self, api_key: str | None) -> tuple[str, dict[str, Any] | None]:
        """(hash, key row) of a usable virtual key, row None for the master key; 401 for a missing
        or unknown key, the key's own refusal when it is revoked, expired or blocked. For the calls
        that are not model calls (batch ownership, feedback): no allow-list, quota or reservation."""
        if not api_key:
            raise unauthorized("missing API key: send 'Authorization: Bearer sk-doka-...'", "missing_api_key")
        h = hash_key(api_key)
        if self.master_key_hash is not None and h == self.master_key_hash:
            return h, None
        if not api_key.startswith(KEY_PREFIX):
            raise unauthorized("invalid API key")
        key = await self._lookup(h)
        if key is None:
            raise unauthorized("invalid API key")
        _refuse_unusable(key)
        return h, key

    async def batch_principal(self, api_key: str | None, models: list[str] | None = None) -> dict[str, Any]:
        """Who owns files and batches: {key_id, key_hash} of a usable key (401 else).

        With `models` (creating a batch): the key must be allowed every one of them (403) and
        have quota and budget left now (429), so a batch is refused up front, not line by line.
        """
        await self._start()
        try:
            h, key = await self._usable_key(api_key)
            if key is None:  # the master key
                return ok({"key_id": MASTER_ID, "key_hash": h})
            if models is not None:
                allowed = key["models"] or []
                bad = sorted({m for m in models if allowed and m not in allowed})
                if bad:
                    raise forbidden(f"this key may not use model(s) {', '.join(bad)} named in the batch; "
                                    f"allowed: {', '.join(allowed)}")
                if key["id"] not in self._meters:
                    await self._build_meter(key)
                # anything left at all (one token, a trace of budget); a full rpm/tpm window only waits
                refusal = self._meters[key["id"]].check(key, 1, 1e-12, time.time())
                if refusal is not None and refusal.code in ("budget_exceeded", "insufficient_quota"):
                    raise refusal
            return ok({"key_id": key["id"], "key_hash": h})
        except AccountsError as e:
            return err(e)

    def _cached_row(self, key_hash: str) -> tuple[dict[str, Any] | None] | None:
        """The key's row as a 1-tuple when the cache (and its meter) can decide now, else None."""
        cached = self._keys.get(key_hash)
        if cached is None or time.monotonic() - cached[1] >= self.key_ttl_s:
            return None
        row = cached[0]
        if row is not None and row["id"] not in self._meters:
            return None
        return (row,)

    def _authorize_now(
        self, api_key: str | None, model: str | None, est_tokens: int, request_id: str | None,
        owner: str | None, row: tuple[dict[str, Any] | None] | None = None, key_hash: str | None = None,
    ) -> dict[str, Any] | None:
        """The whole admission decision, synchronously; None when it needs the database first.

        No await from the limit check to the reservation, so concurrent requests from any number
        of replicas see one consistent count. `row`: the key's row (1-tuple) when just loaded.
        """
        try:
            if owner is not None:
                self._owners[owner] = time.monotonic()
            if not self.require_keys and not api_key and not key_hash:
                return ok({"key_id": None, "reservation_id": None, "anonymous": True})
            if not api_key and not key_hash:
                raise unauthorized("missing API key: send 'Authorization: Bearer sk-doka-...'", "missing_api_key")
            h = key_hash or hash_key(api_key)  # type: ignore[arg-type]
            if self.master_key_hash is not None and h == self.master_key_hash:
                return ok({"key_id": MASTER_ID, "reservation_id": None, "master": True})
            if not key_hash and not api_key.startswith(KEY_PREFIX):  # type: ignore[union-attr]
                raise unauthorized("invalid API key")
            found = row if row is not None else self._cached_row(h)
            if found is None:
                return None
            key = found[0]
            if key is None:
                raise unauthorized("invalid API key")
            _refuse_unusable(key)
            allowed = key["models"] or []
            if allowed and model not in allowed:
                self._record(key["id"], model, None, 0, 0, 0.0, None, 403, "model_not_allowed", request_id, False)
                raise forbidden(f"this key may not use model {model!r}; allowed: {', '.join(allowed)}")
            meter = self._meters[key["id"]]
            now = time.time()
            est_cost = est_tokens * self._price(model)
            refusal = meter.check(key, est_tokens, est_cost, now)
            if refusal is not None:
                self._record(key["id"], model, None, 0, 0, 0.0, None, refusal.status, refusal.code, request_id, False)
                raise refusal
            res = meter.reserve(key["id"], est_tokens, est_cost, now)
            res.owner, res.request_id, res.model = owner, request_id, model
            rid = uuid.uuid4().hex
            self._reservations[rid] = res
            return ok({
                "key_id": key["id"], "reservation_id": rid, "key_alias": key["alias"], "team": key["team"],
                "user": key["user"], "metadata": key["meta"] or {}, "models": allowed,
            })
        except AccountsError as e:
            return err(e)

    async def feedback_principal(self, api_key: str | None, request_id: str) -> dict[str, Any]:
        """Who may score `request_id`: a valid key that made that request (the master key: any).

        Feedback is not a model call: no model allow-list, no quota, no rpm, no reservation. A
        key that did not make the request gets the same 404 as an unknown id (ids do not leak).
        """
        try:
            _, key = await self._usable_key(api_key)
            if key is None:  # the master key
                return ok({"key_id": MASTER_ID, "master": True})
            owned = any(r["request_id"] == request_id and r["key_id"] == key["id"] for r in self._buffer)
            if not owned:
                owned = await self._db(db.request_owned_by, request_id, key["id"])
            if not owned:
                raise not_found(f"no request {request_id!r} was made with this key", "request_id")
            return ok({"key_id": key["id"], "key_alias": key["alias"], "team": key["team"], "user": key["user"]})
        except AccountsError as e:
            return err(e)

    async def settle(self, reservation_id: str | None, key_id: str | None, **outcome: Any) -> dict[str, Any]:
        """Replace the reservation by the actual usage and queue the ledger row; returns the cost."""
        await self._start()
        result = self._settle_now(reservation_id, key_id, **outcome)
        await self._sync()
        if self._closed:  # no flush loop any more (shutting down): write this row now, not never
            await self.flush()
        return result

    def _settle_now(
        self,
        reservation_id: str | None,
        key_id: str | None,
        *,
        model_requested: str | None,
        model: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        status: int = 200,
        latency_ms: float | None = None,
        route_reason: str | None = None,
        request_id: str | None = None,
        stream: bool = False,
        cost_usd: float | None = None,
        client_request_id: str | None = None,
        row_uid: str | None = None,
    ) -> dict[str, Any]:
        if cost_usd is None:
            p_in, p_out = self.prices.get(model or "", (0.0, 0.0))
            cost_usd = prompt_tokens * p_in + completion_tokens * p_out
        res = self._reservations.pop(reservation_id, None) if reservation_id else None
        if res is None and reservation_id:  # closed as orphaned (its replica was presumed lost), or a core restart
            log.warning("accounts: reservation %s settled but no longer open; recording it anyway", reservation_id)
        meter = self._meters.get(key_id or "")
        if meter is not None:
            if res is not None:
                meter.release(res)
            meter.commit(prompt_tokens + completion_tokens, cost_usd, time.time())
        self._record(key_id, model_requested, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,
                     status, route_reason, request_id, stream, client_request_id, row_uid)
        return ok(cost_usd)

    async def batch(self, ops: list[tuple[str, tuple, dict[str, Any]]], client: str | None = None,
                    seq: int | None = None) -> list[dict[str, Any]]:
        """Many `authorize` / `settle` calls in one round trip (the ingress's group commit, see
        accounts.batching); answers in the same order.

        `client`/`seq` number a caller's batches: the same batch sent again (its answer was lost
        with a connection, see accounts.wire) gets the first answer instead of being applied twice.

        Each op is decided on its own and in order, synchronously when the key is cached (no
        task per op: at a few hundred requests/s that bookkeeping was most of this actor's
        work); an op that needs a database read waits for it without holding up the others.
        """
        if client is None:
            return await self._batch_now(ops)
        last = self._last_batch.get(client)
        if last is not None and last[0] == seq:  # a resend, maybe while the first is still running
            return await asyncio.shield(last[1])
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self._last_batch[client] = (seq, answer)
        try:
            answer.set_result(await self._batch_now(ops))
        except BaseException as e:  # maybe part-applied: a resend gets this failure, not a second go
            answer.set_exception(e)
            answer.exception()  # retrieved here; a resend waiting on it sees it too
            raise
        return answer.result()

    async def _batch_now(self, ops: list[tuple[str, tuple, dict[str, Any]]]) -> list[dict[str, Any]]:
        await self._start()
        results: list[dict[str, Any] | None] = []
        waiting: list[tuple[int, Any]] = []
        for i, (name, args, kwargs) in enumerate(ops):
            if name == "settle":
                results.append(self._settle_now(*args, **kwargs))
                continue
            results.append(self._authorize_now(*args, **kwargs))
            if results[-1] is None:
                waiting.append((i, self._authorize_loaded(*args, **kwargs)))
        if waiting:
            for (i, _), result in zip(waiting, await asyncio.gather(*(c for _, c in waiting))):
                results[i] = result
        await self._sync()  # the batch's settlements are on disk before they are answered
        if self._closed:  # no flush loop any more (shutting down): write these rows now, not never
            await self.flush()
        return results  # type: ignore[return-value]

    def _record(self, key_id, model_requested, model, p, c, cost, latency_ms, status, reason, request_id, stream,
                client_request_id: str | None = None, row_uid: str | None = None) -> None:
        now = to_naive_utc(time.time())
        row = {
            "request_id": request_id, "key_id": key_id, "model_requested": model_requested, "model": model,
            "prompt_tokens": int(p), "completion_tokens": int(c), "cost_usd": float(cost),
            "latency_ms": latency_ms, "status": int(status), "route_reason": reason, "stream": bool(stream),
            "created_at": now, "day": now.strftime("%Y-%m-%d"), "client_request_id": client_request_id,
            "row_uid": row_uid or uuid.uuid4().hex,  # the caller's, so a settle sent again is one row
        }
        self._buffer.append(row)
        if self._spool is not None:
            self._spool.append(row)
        if len(self._buffer) > MAX_BUFFER:
            self._keep([])

    async def _sync(self) -> None:
        """Recorded rows reach the disk before any settlement is acknowledged (see accounts.spool)."""
        if self._spool is not None:
            await self._spool.sync_async()
