"""The accounts core's ledger side: the database calls off the event loop, the periodic flush of
buffered ledger rows and provider windows (the spool keeps what a killed process acknowledged),
and the sweep that closes reservations of lost ingress replicas. A mixin of `AccountsCore`,
which owns the state it uses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from accounts import db
from accounts.errors import AccountsError, err, ok, unavailable
from accounts.meter import Reservation

log = logging.getLogger("doka.accounts")
T = TypeVar("T")
MAX_BUFFER = 200_000  # ledger rows kept in memory while the database is down
ORPHAN_STATUS = 502
ORPHAN_REASON = "orphaned: the ingress replica was lost before settling"
DB_DOWN = (OperationalError, InterfaceError, PoolTimeout, OSError)  # outage, not a bug: answer 503
_COUNTERS: dict[str, Any] = {}


def count_metric(name: str, n: int) -> None:
    """Add to a Ray Serve metric (exported as ray_<name>_total) when running in a replica."""
    try:
        from ray.serve import metrics

        if name not in _COUNTERS:
            _COUNTERS[name] = metrics.Counter(name, description=f"accounts: {name.replace('_', ' ')}")
        _COUNTERS[name].inc(n)
    except Exception:  # outside Ray (library use, unit tests): the core's stats() counts it
        pass


class LedgerWriter:
    """Flush, keep and sweep (see the module docstring); state lives on `AccountsCore`."""

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
                return ok(0)
            try:
                refused = await self._db(db.insert_ledger_safe, rows, outage=DB_DOWN)
            except Exception as e:  # outage (503) or anything unforeseen: lose nothing
                self.flush_failures += 1
                self._keep(rows)
                msg = e.message if isinstance(e, AccountsError) else repr(e)
                log.warning("ledger flush failed (%d rows kept): %s", len(rows), msg)
                return err(e if isinstance(e, AccountsError) else unavailable(f"ledger flush failed: {msg}"))
            if refused:
                self.rows_quarantined += len(refused)
                count_metric("doka_ledger_rows_quarantined", len(refused))
                log.error("ledger: %d rows refused by the database, quarantined (first: %s)", len(refused),
                          refused[0][1])
                if self._spool is not None:
                    self._spool.quarantine(refused)
            if self._spool is not None:
                self._spool.discard(covered)
            return ok(len(rows) - len(refused))

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
            count_metric("doka_ledger_rows_dropped", over)
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
