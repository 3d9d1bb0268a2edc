"""The shared accounts state: key cache, per-key counters, reservations and the ledger buffer.

One `AccountsCore` serves every ingress replica (it runs as one named Ray actor, see
`accounts.actor`), so admission is decided in a single event loop with no await between the
check and the reservation. The database is touched only on a key-cache miss, by the
periodic ledger flush, and by the admin API.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from accounts import db
from accounts.errors import AccountsError, bad_request, forbidden, not_found, unauthorized, unavailable
from accounts.keys import KEY_PREFIX, KeyLimits, hash_key, key_hint, new_key, new_key_id, public_key_info
from accounts.meter import KeyMeter, Reservation, period_start, to_naive_utc
from accounts.provider_limits import Hold, ProviderLimiter
from accounts.spool import LedgerSpool

log = logging.getLogger("doka.accounts")
T = TypeVar("T")
MASTER_ID = "master"
MAX_BUFFER = 200_000  # ledger rows kept in memory while the database is down
MAX_CACHED_KEYS = 100_000
ORPHAN_STATUS = 502
ORPHAN_REASON = "orphaned: the ingress replica was lost before settling"
DB_DOWN = (OperationalError, InterfaceError, PoolTimeout, OSError)  # outage, not a bug: answer 503


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


_COUNTERS: dict[str, Any] = {}


def _count(name: str, n: int) -> None:
    """Add to a Ray Serve metric (exported as ray_<name>_total) when running in a replica."""
    try:
        from ray.serve import metrics

        if name not in _COUNTERS:
            _COUNTERS[name] = metrics.Counter(name, description=f"accounts: {name.replace('_', ' ')}")
        _COUNTERS[name].inc(n)
    except Exception:  # outside Ray (library use, unit tests): the core's stats() counts it
        pass


def _ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def _err(e: AccountsError) -> dict[str, Any]:
    return {"error": e.to_dict()}


class AccountsCore:
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
    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking DB call off the loop; any DB failure becomes a 503."""
        await self._start()
        if not self._migrated:
            try:
                await asyncio.to_thread(db.migrate, self.engine)
                self._migrated = True
            except DB_DOWN as e:
                raise unavailable(f"accounts database unavailable: {type(e).__name__}") from e
        try:
            return await asyncio.to_thread(fn, self.engine, *args, **kwargs)
        except DB_DOWN as e:
            raise unavailable(f"accounts database unavailable: {type(e).__name__}") from e

    async def _start(self) -> None:
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        if self._flusher is None and not self._closed:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settle_interval_s)
            try:
                await self.flush()
                self._sweep_reservations()
            except Exception:  # never let the loop die; the next tick retries
                log.exception("accounts flush loop")

    def _sweep_reservations(self) -> None:
        """Close reservations whose ingress replica died before settling them.

        A reservation is orphaned when its owner has not been heard of for `owner_lease_s`
        (ingress replicas heartbeat; see `heartbeat`), or, with no owner (library use), after
        `reservation_ttl_s`. Its hold is released and it gets a ledger row (status 502, nothing
        charged: the gateway failed it, and what was delivered is unknown) so no admitted
        request is missing from the ledger.
        """
        now, mono = time.time(), time.monotonic()
        dead = {o for o, seen in self._owners.items() if mono - seen > self.owner_lease_s}
        cutoff = now - self.reservation_ttl_s

        def orphaned(res: Reservation) -> bool:
            return res.owner in dead if res.owner is not None else res.created < cutoff

        orphans = [rid for rid, res in self._reservations.items() if orphaned(res)]
        for owner in dead:
            del self._owners[owner]
        for rid in orphans:
            res = self._reservations.pop(rid)
            if res.key_id in self._meters:
                self._meters[res.key_id].release(res)
            self._record(res.key_id, res.model, None, 0, 0, 0.0, None, ORPHAN_STATUS, ORPHAN_REASON,
                         res.request_id, False)
        if orphans:
            log.warning("accounts: closed %d reservations of lost ingress replicas", len(orphans))
        lost_holds = self.plimits.orphaned(dead, cutoff, now)
        if lost_holds:
            log.warning("accounts: settled %d provider-limit holds of lost ingress replicas", len(lost_holds))

    async def serve_wire(self) -> dict[str, Any]:
        """Start (once) the socket the ingress sends its batches over (accounts.wire); its address.

        It listens on this node's IP, so ingress replicas on other nodes reach it too.
        """
        from accounts.wire import WireServer

        if self._wire is None:
            self._wire = WireServer(self.batch, host=_node_ip())
        return _ok(await self._wire.start())

    async def heartbeat(self, owner: str) -> dict[str, Any]:
        """An ingress replica is alive: its open reservations stay open (see _sweep_reservations)."""
        self._owners[owner] = time.monotonic()
        return _ok(True)

    async def ready(self) -> dict[str, Any]:
        """Migrate now (start-up); returns an error dict when the database is down."""
        try:
            await self._db(lambda engine: None)
            return _ok(True)
        except AccountsError as e:
            return _err(e)

    async def flush(self) -> dict[str, Any]:
        """Write buffered ledger rows in one batch; on an outage keep them for the next try.

        A row the database refuses (a value it cannot store) is quarantined and counted; the
        rest of the batch is written. The spool segments the batch covered go only after that.
        """
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        assert self._flush_lock is not None
        async with self._flush_lock:
            await self._flush_provider_usage()
            rows, self._buffer = self._buffer, []
            covered = self._spool.rotate() if self._spool is not None else []
            if not rows:
                if self._spool is not None:
                    self._spool.discard(covered)
                return _ok(0)
            try:
                refused = await self._db(db.insert_ledger_safe, rows, outage=DB_DOWN)
            except Exception as e:  # outage (503) or anything unforeseen: lose nothing
                self.flush_failures += 1
                self._keep(rows)
                msg = e.message if isinstance(e, AccountsError) else repr(e)
                log.warning("ledger flush failed (%d rows kept): %s", len(rows), msg)
                return _err(e if isinstance(e, AccountsError) else unavailable(f"ledger flush failed: {msg}"))
            if refused:
                self.rows_quarantined += len(refused)
                _count("doka_ledger_rows_quarantined", len(refused))
                log.error("ledger: %d rows refused by the database, quarantined (first: %s)", len(refused),
                          refused[0][1])
                if self._spool is not None:
                    self._spool.quarantine(refused)
            if self._spool is not None:
                self._spool.discard(covered)
            return _ok(len(rows) - len(refused))

    async def _flush_provider_usage(self) -> None:
        """Write the provider windows that changed (absolute counts: a repeat is harmless)."""
        rows = self.plimits.dirty()
        if not rows:
            return
        try:
            await self._db(db.save_provider_usage, rows)
        except Exception as e:  # outage: keep them for the next flush
            self.plimits.mark_dirty(rows)
            log.warning("provider usage flush failed (%d windows kept): %r", len(rows), e)

    def _keep(self, rows: list[dict[str, Any]]) -> None:
        """Put unwritten rows back in front of the buffer, dropping (and counting) past MAX_BUFFER."""
        self._buffer = rows + self._buffer
        over = len(self._buffer) - MAX_BUFFER
        if over > 0:
            del self._buffer[:over]
            self.rows_dropped += over
            _count("doka_ledger_rows_dropped", over)
            log.error("ledger: %d rows dropped (buffer full while the database is down)", over)

    async def close(self) -> dict[str, Any]:
        """Stop the flush loop and write what is buffered (gateway shutdown)."""
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        return await self.flush()  # the spool stays open: a late settlement is still spooled

    def __ray_shutdown__(self) -> None:
        """Graceful actor exit: write what is still buffered."""
        rows = self.plimits.dirty()
        if rows:
            try:
                db.save_provider_usage(self.engine, rows)
            except Exception:
                log.exception("final provider usage flush failed")
        if self._buffer:
            try:
                if self._spool is not None:
                    self._spool.sync()  # whatever happens next, the spool has every row
                db.insert_ledger_safe(self.engine, self._buffer, outage=DB_DOWN)
                self._buffer = []
            except Exception:
                log.exception("final ledger flush failed")

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
            return _err(e)
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
                return _ok({"key_id": MASTER_ID, "key_hash": h})
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
            return _ok({"key_id": key["id"], "key_hash": h})
        except AccountsError as e:
            return _err(e)

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
                return _ok({"key_id": None, "reservation_id": None, "anonymous": True})
            if not api_key and not key_hash:
                raise unauthorized("missing API key: send 'Authorization: Bearer sk-doka-...'", "missing_api_key")
            h = key_hash or hash_key(api_key)  # type: ignore[arg-type]
            if self.master_key_hash is not None and h == self.master_key_hash:
                return _ok({"key_id": MASTER_ID, "reservation_id": None, "master": True})
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
            return _ok({
                "key_id": key["id"], "reservation_id": rid, "key_alias": key["alias"], "team": key["team"],
                "user": key["user"], "metadata": key["meta"] or {}, "models": allowed,
            })
        except AccountsError as e:
            return _err(e)

    async def feedback_principal(self, api_key: str | None, request_id: str) -> dict[str, Any]:
        """Who may score `request_id`: a valid key that made that request (the master key: any).

        Feedback is not a model call: no model allow-list, no quota, no rpm, no reservation. A
        key that did not make the request gets the same 404 as an unknown id (ids do not leak).
        """
        try:
            _, key = await self._usable_key(api_key)
            if key is None:  # the master key
                return _ok({"key_id": MASTER_ID, "master": True})
            owned = any(r["request_id"] == request_id and r["key_id"] == key["id"] for r in self._buffer)
            if not owned:
                owned = await self._db(db.request_owned_by, request_id, key["id"])
            if not owned:
                raise not_found(f"no request {request_id!r} was made with this key", "request_id")
            return _ok({"key_id": key["id"], "key_alias": key["alias"], "team": key["team"], "user": key["user"]})
        except AccountsError as e:
            return _err(e)

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
        return _ok(cost_usd)

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

    # ---------------------------------------------------------------- provider limits
    async def _load_provider_usage(self) -> None:
        """Once: the current windows' counts from the database, so a restart resets no limit.

        A database that is down leaves the counts at what this process saw (admission goes on:
        a limit must not take the gateway down) and the load is tried again on the next call.
        """
        if self._plimits_loaded:
            return
        if self._plimits_loading is not None:
            return await asyncio.shield(self._plimits_loading)
        fut = self._plimits_loading = asyncio.get_running_loop().create_future()
        try:
            rows = await self._db(db.load_provider_usage, self.plimits.wanted(time.time()))
            self.plimits.load(rows, time.time())
            self._plimits_loaded = True
        except Exception as e:
            log.warning("accounts: provider usage not loaded (%r); counting from what this process saw", e)
        finally:
            self._plimits_loading = None
            fut.set_result(None)

    async def provider_admit(self, model: str, tokens: int, owner: str | None = None) -> dict[str, Any]:
        """Hold one call to `model` (and `tokens`, its worst case) within its provider limits.

        `{"ok": {"hold": id}}`, `{"ok": {"refused": {...limit, retry_after...}}}`, or
        `{"ok": {}}` for a model without limits. Decided with no await between check and hold.
        """
        if self.plimits.limited(model):
            await self._load_provider_usage()
        if owner is not None:
            self._owners[owner] = time.monotonic()
        got = self.plimits.admit(model, tokens, time.time(), owner)
        if got is None:
            return _ok({})
        if isinstance(got, Hold):
            return _ok({"hold": got.id})
        return _ok({"refused": got.to_dict()})

    async def provider_settle(self, hold_id: str, tokens: int) -> dict[str, Any]:
        """The call was made: count it with the tokens it used. False: closed already."""
        return _ok(self.plimits.settle(hold_id, tokens, time.time()))

    async def provider_release(self, hold_id: str) -> dict[str, Any]:
        """The call was never made: drop the hold. False: closed already."""
        return _ok(self.plimits.release(hold_id, time.time()))

    async def provider_used_up(self, models: list[str]) -> dict[str, Any]:
        """Which of `models` cannot take a request now ({model: refusal}); for `auto`'s candidates."""
        if any(self.plimits.limited(m) for m in models):
            await self._load_provider_usage()
        return _ok({m: r.to_dict() for m, r in self.plimits.used_up(models, time.time()).items()})

    async def provider_remaining(self) -> dict[str, Any]:
        """What is left per limited model and limit in the current windows, and the calls in
        flight per model (/metrics)."""
        if self.plimits.limits:
            await self._load_provider_usage()
        return _ok({"windows": self.plimits.remaining(time.time()), "in_flight": self.plimits.in_flight()})

    # ---------------------------------------------------------------- admin
    async def _find(self, key: str | None, key_id: str | None) -> dict[str, Any]:
        if key:
            row = await self._db(db.get_key, key_hash=hash_key(key))
        elif key_id:
            row = await self._db(db.get_key, key_id=key_id)
        else:
            raise AccountsError(400, "give `key` or `key_id`", type="invalid_request_error", code="invalid_request")
        if row is None:
            raise not_found("no such key", "key" if key else "key_id")
        return row

    async def _admin(self, coro) -> dict[str, Any]:
        try:
            return _ok(await coro)
        except AccountsError as e:
            return _err(e)

    @staticmethod
    def _columns(fields: dict[str, Any], *, only_set: bool) -> dict[str, Any]:
        """API field names (KeyLimits) -> validated column values."""
        try:
            return KeyLimits.model_validate(fields).column_values(only_set=only_set)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise bad_request(f"{loc}: {err['msg']}", param=loc or None) from e

    async def generate_key(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Create a key from KeyLimits fields; the answer holds the plain key, once."""

        async def run():
            values = self._columns(fields, only_set=False)
            plain = new_key()
            row = await self._db(db.insert_key, {**values, "id": new_key_id(), "key_hash": hash_key(plain),
                                                "key_hint": key_hint(plain)})
            return {"key": plain, **public_key_info(row)}

        return await self._admin(run())

    async def key_info(self, key: str | None = None, key_id: str | None = None) -> dict[str, Any]:
        async def run():
            row = await self._find(key, key_id)
            meter = self._meters.get(row["id"]) or await self._build_meter(row)
            return {**public_key_info(row), "usage": meter.snapshot(time.time())}

        return await self._admin(run())

    async def list_keys(self, **filters: Any) -> dict[str, Any]:
        async def run():
            return [public_key_info(r) for r in await self._db(db.list_keys, **filters)]

        return await self._admin(run())

    async def update_key(self, key: str | None, key_id: str | None, fields: dict[str, Any]) -> dict[str, Any]:
        """Change the KeyLimits fields given; cached copies are dropped so it applies at once."""

        async def run():
            values = self._columns(fields, only_set=True)
            old = await self._find(key, key_id)
            row = await self._db(db.update_key, old["id"], values)
            self._invalidate(old)
            if row["budget_period"] != old["budget_period"] and old["id"] in self._meters:
                await self._build_meter(row, keep=self._meters[old["id"]])
            return public_key_info(row)

        return await self._admin(run())

    async def delete_key(self, keys: list[str], key_ids: list[str]) -> dict[str, Any]:
        """Revoke (soft delete: the ledger keeps pointing at the key)."""

        async def run():
            rows = [await self._find(k, None) for k in keys] + [await self._find(None, i) for i in key_ids]
            for row in rows:
                await self._db(db.update_key, row["id"], {"revoked_at": to_naive_utc(time.time())})
                self._invalidate(row)
            return {"deleted_keys": [r["id"] for r in rows]}

        return await self._admin(run())

    async def usage(self, group_by: list[str], **filters: Any) -> dict[str, Any]:
        async def run():
            await self.flush()
            return await self._db(db.usage, group_by, **filters)

        return await self._admin(run())

    async def ledger(self, key_id: str | None = None, limit: int = 10_000, newest_first: bool = False) -> dict[str, Any]:
        async def run():
            await self.flush()
            rows = await self._db(db.ledger_rows, key_id=key_id, limit=limit, newest_first=newest_first)
            for r in rows:
                r["created_at"] = r["created_at"].isoformat()
            return rows

        return await self._admin(run())

    async def stats(self) -> dict[str, Any]:
        return _ok({"buffered": len(self._buffer), "reservations": len(self._reservations),
                    "cached_keys": len(self._keys), "flush_failures": self.flush_failures,
                    "wire_batches": self._wire.batches if self._wire is not None else 0,
                    "rows_quarantined": self.rows_quarantined, "rows_dropped": self.rows_dropped,
                    "provider_holds": self.plimits.open_holds(),
                    "spool": str(self._spool.dir) if self._spool is not None else None})

    async def console_query(self, name: str, **kwargs: Any) -> dict[str, Any]:
        """A read query of the console (accounts.console_queries, by name), after a flush."""
        from accounts.console_queries import QUERIES

        async def run():
            fn = QUERIES.get(name)
            if fn is None:
                raise bad_request(f"unknown console query {name!r}")
            await self.flush()
            try:
                return await self._db(fn, **kwargs)
            except (TypeError, ValueError) as e:
                raise bad_request(str(e)) from e

        return await self._admin(run())
