"""Files' and batches' state in the accounts database (tables of migration 0005_batches).

Synchronous SQLAlchemy Core calls; `batches.core` runs them off the event loop. Each line's
result is inserted with its batch's counters in one transaction, so a counted line is a
recorded line, and a resumed batch skips exactly the lines that have a row.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy import (JSON, BigInteger, Boolean, Column, Engine, Float, Integer, MetaData, String, Table, Text,
                        insert, or_, select, update)

USAGE_COLUMNS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
meta = MetaData()
files = Table(
    "doka_files", meta,
    Column("id", String(64), primary_key=True), Column("owner", String(64), nullable=False),
    Column("filename", String(512), nullable=False), Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False), Column("created_at", BigInteger, nullable=False),
    Column("path", String(1024), nullable=False), Column("deleted", Boolean, nullable=False, default=False),
)
batches = Table(
    "doka_batches", meta,
    Column("id", String(64), primary_key=True), Column("owner", String(64), nullable=False),
    Column("key_hash", String(64)), Column("input_file_id", String(64), nullable=False),
    Column("endpoint", String(64), nullable=False), Column("completion_window", String(16), nullable=False),
    Column("metadata", JSON), Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False, default=0), Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0), Column("created_at", BigInteger, nullable=False),
    *(Column(c, BigInteger) for c in ("expires_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
                                      "expired_at", "cancelling_at", "cancelled_at")),
    Column("output_file_id", String(64)), Column("error_file_id", String(64)), Column("errors", JSON),
    Column("stop_code", String(64)), Column("lease_owner", String(64)), Column("lease_until", Float),
    # token totals of the served lines (migration 0006_batch_usage), summed in record_line
    *(Column(c, BigInteger, nullable=False, default=0) for c in USAGE_COLUMNS),
)
lines = Table(
    "doka_batch_lines", meta,
    Column("batch_id", String(64), primary_key=True), Column("idx", Integer, primary_key=True),
    Column("custom_id", String(512), nullable=False), Column("failed", Boolean, nullable=False),
    Column("line", Text, nullable=False),
)

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


class BatchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ---- files ----
    def add_file(self, row: dict[str, Any]) -> dict[str, Any]:
        with self.engine.begin() as c:
            c.execute(insert(files).values(**row))
        return row

    def get_file(self, file_id: str, owner: str | None) -> dict[str, Any] | None:
        """The file if it exists, is not deleted and belongs to `owner` (None: any owner)."""
        with self.engine.connect() as c:
            r = c.execute(select(files).where(files.c.id == file_id, files.c.deleted.is_(False))).mappings().first()
        if r is None or (owner is not None and r["owner"] != owner):
            return None
        return dict(r)

    def list_files(self, owner: str, purpose: str | None, limit: int, after: str | None,
                   newest_first: bool) -> list[dict[str, Any]]:
        q = select(files).where(files.c.owner == owner, files.c.deleted.is_(False))
        if purpose:
            q = q.where(files.c.purpose == purpose)
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(q).mappings()]
        rows.sort(key=lambda r: (r["created_at"], r["id"]), reverse=newest_first)
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        return rows[:limit]

    def delete_file(self, file_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(files).where(files.c.id == file_id).values(deleted=True))

    # ---- batches ----
    def add_batch(self, row: dict[str, Any]) -> dict[str, Any]:
        with self.engine.begin() as c:
            c.execute(insert(batches).values(**row))
        return self.get_batch(row["id"], None)  # type: ignore[return-value]

    def get_batch(self, batch_id: str, owner: str | None) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            r = c.execute(select(batches).where(batches.c.id == batch_id)).mappings().first()
        if r is None or (owner is not None and r["owner"] != owner):
            return None
        return dict(r)

    def list_batches(self, owner: str, limit: int, after: str | None) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = [dict(r) for r in c.execute(select(batches).where(batches.c.owner == owner)).mappings()]
        rows.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)  # newest first, as OpenAI lists
        if after:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        return rows[:limit]

    def set_batch(self, batch_id: str, only_from: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Update a batch; with `only_from`, only while its status is one of those (a transition)."""
        q = update(batches).where(batches.c.id == batch_id)
        if only_from is not None:
            q = q.where(batches.c.status.in_(only_from))
        with self.engine.begin() as c:
            return c.execute(q.values(**values)).rowcount > 0

    def claim(self, runner: str, lease_s: float) -> dict[str, Any] | None:
        """Take one unfinished batch nobody holds (or whose holder's lease ran out), oldest first."""
        now = time.time()
        with self.engine.connect() as c:
            ids = list(c.execute(select(batches.c.id).where(
                batches.c.status.in_(ACTIVE),
                or_(batches.c.lease_until.is_(None), batches.c.lease_until < now, batches.c.lease_owner == runner),
            ).order_by(batches.c.created_at)).scalars())
        for bid in ids:
            with self.engine.begin() as c:
                got = c.execute(update(batches).where(
                    batches.c.id == bid, batches.c.status.in_(ACTIVE),
                    or_(batches.c.lease_until.is_(None), batches.c.lease_until < now,
                        batches.c.lease_owner == runner),
                ).values(lease_owner=runner, lease_until=now + lease_s)).rowcount
            if got:
                return self.get_batch(bid, None)
        return None

    def renew(self, batch_id: str, runner: str, lease_s: float) -> bool:
        with self.engine.begin() as c:
            return c.execute(update(batches).where(batches.c.id == batch_id, batches.c.lease_owner == runner)
                             .values(lease_until=time.time() + lease_s)).rowcount > 0

    def release(self, batch_id: str, runner: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(batches).where(batches.c.id == batch_id, batches.c.lease_owner == runner)
                      .values(lease_owner=None, lease_until=None))

    # ---- lines ----
    def done_lines(self, batch_id: str) -> set[int]:
        with self.engine.connect() as c:
            return set(c.execute(select(lines.c.idx).where(lines.c.batch_id == batch_id)).scalars())

    def record_line(self, batch_id: str, idx: int, custom_id: str, failed: bool, line: str,
                    usage: dict[str, int] | None = None) -> bool:
        """Record a line's result, count it and add its `usage` (USAGE_COLUMNS) to the batch's totals,
        in one transaction; False if it was recorded already (so nothing is counted twice)."""
        try:
            with self.engine.begin() as c:
                exists = c.execute(select(lines.c.idx).where(lines.c.batch_id == batch_id, lines.c.idx == idx)).first()
                if exists is not None:
                    return False
                c.execute(insert(lines).values(batch_id=batch_id, idx=idx, custom_id=custom_id, failed=failed,
                                               line=line))
                col = batches.c.failed if failed else batches.c.completed
                values = {col.name: col + 1}
                values.update({k: batches.c[k] + n for k, n in (usage or {}).items() if k in USAGE_COLUMNS and n})
                c.execute(update(batches).where(batches.c.id == batch_id).values(values))
        except IntegrityError:  # another runner recorded it at the same moment: counted there
            return False
        return True

    def result_lines(self, batch_id: str) -> list[tuple[bool, str]]:
        """(failed, line) of every recorded line, in input order."""
        with self.engine.connect() as c:
            return [(bool(f), ln) for f, ln in c.execute(
                select(lines.c.failed, lines.c.line).where(lines.c.batch_id == batch_id).order_by(lines.c.idx))]

