"""Engine creation, start-up migrations and every SQL statement accounts runs.

All functions here are synchronous and run off the event loop (`asyncio.to_thread`) in the
accounts actor; nothing on the request hot path calls them except a key-cache miss.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, insert, or_, select, update
from sqlalchemy.engine import make_url

from accounts.models import Key, LedgerEntry, ProviderUsage, utcnow

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_migrate_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs (psycopg2 is not a dependency)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def default_url(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'doka.db').resolve()}"


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # WAL: readers never block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # pre_ping + short connect timeout: an outage is noticed at once and recovery needs no restart
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args={"connect_timeout": 3})


def migrate(engine: Engine) -> None:
    """Bring the schema to head with the Alembic scripts shipped inside this package."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _migrate_lock, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


# ---- keys ----
def key_to_dict(k: Key) -> dict[str, Any]:
    return {c.key: getattr(k, c.key) for c in Key.__mapper__.column_attrs}


def insert_key(engine: Engine, values: dict[str, Any]) -> dict[str, Any]:
    now = utcnow()
    values = {"created_at": now, "updated_at": now, **values}
    with engine.begin() as conn:
        conn.execute(insert(Key).values(**values))
    return get_key(engine, key_id=values["id"])  # type: ignore[return-value]


def get_key(engine: Engine, *, key_id: str | None = None, key_hash: str | None = None) -> dict[str, Any] | None:
    stmt = select(Key)
    stmt = stmt.where(Key.id == key_id) if key_id else stmt.where(Key.key_hash == key_hash)
    with engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    if row is None:
        return None
    return {c.key: row[Key.__table__.c[c.columns[0].name]] for c in Key.__mapper__.column_attrs}


def list_keys(
    engine: Engine, *, team: str | None = None, user: str | None = None, include_revoked: bool = False,
    limit: int = 100, offset: int = 0,
) -> list[dict[str, Any]]:
    stmt = select(Key).order_by(Key.created_at, Key.id).limit(limit).offset(offset)
    if team is not None:
        stmt = stmt.where(Key.team == team)
    if user is not None:
        stmt = stmt.where(Key.user == user)
    if not include_revoked:
        stmt = stmt.where(Key.revoked_at.is_(None))
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    return [{c.key: r[Key.__table__.c[c.columns[0].name]] for c in Key.__mapper__.column_attrs} for r in rows]


def update_key(engine: Engine, key_id: str, values: dict[str, Any]) -> dict[str, Any] | None:
    with engine.begin() as conn:
        res = conn.execute(update(Key).where(Key.id == key_id).values(updated_at=utcnow(), **values))
    if res.rowcount == 0:
        return None
    return get_key(engine, key_id=key_id)


# ---- ledger ----
def insert_ledger(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    with engine.begin() as conn:
        conn.execute(insert(LedgerEntry), list(rows))


def insert_ledger_safe(engine: Engine, rows: Sequence[dict[str, Any]],
                       outage: tuple[type[BaseException], ...] = ()) -> list[tuple[dict[str, Any], str]]:
    """Insert the rows; the ones the database refuses come back (row, why), the rest are written.

    One batch first (the normal case). If the database refuses it (a value it cannot store, a
    row already written by an earlier try or a spool replay), each row goes on its own: rows
    whose `row_uid` is already there are skipped, the others inserted one by one, and only those
    the database still refuses are returned. An `outage` error is raised as is (the caller keeps
    every row for the next try; the unique `row_uid` makes that retry safe).
    """
    if not rows:
        return []
    seen: set[str] = set()  # a settlement sent again (its answer was lost) is one row
    unique = []
    for r in rows:
        uid = r.get("row_uid")
        if uid is None or uid not in seen:
            unique.append(r)
            if uid is not None:
                seen.add(uid)
    rows = unique
    try:
        insert_ledger(engine, rows)
        return []
    except outage:
        raise
    except Exception:  # one bad row (or a replayed one) must not cost the batch: row by row
        pass
    uids = [r["row_uid"] for r in rows if r.get("row_uid")]
    present: set[str] = set()
    with engine.connect() as conn:
        for i in range(0, len(uids), 500):
            chunk = uids[i:i + 500]
            present.update(conn.execute(select(LedgerEntry.row_uid).where(LedgerEntry.row_uid.in_(chunk))).scalars())
    refused: list[tuple[dict[str, Any], str]] = []
    for row in rows:
        if row.get("row_uid") in present:
            continue
        try:
            insert_ledger(engine, [row])
        except outage:
            raise
        except Exception as e:
            refused.append((row, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
    return refused


def key_spend_since(engine: Engine, key_id: str, since: Iterable[datetime]) -> list[tuple[int, float, int]]:
    """(tokens, cost, requests) for the key since each given instant: rebuilds counters at start.

    Every row counts whatever its status: a 499 stream or a failed cascade was charged too
    (refusals have no tokens, so they add nothing).
    """
    out = []
    with engine.connect() as conn:
        for t in since:
            row = conn.execute(
                select(
                    func.coalesce(func.sum(LedgerEntry.prompt_tokens + LedgerEntry.completion_tokens), 0),
                    func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0),
                    func.count(LedgerEntry.id),
                ).where(LedgerEntry.key_id == key_id, LedgerEntry.created_at >= t)
            ).one()
            out.append((int(row[0]), float(row[1]), int(row[2])))
    return out


def recent_events(engine: Engine, key_id: str, since: datetime) -> list[tuple[datetime, int]]:
    """(time, tokens) of the key's admitted or charged requests since `since`, for the minute windows."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(LedgerEntry.created_at, LedgerEntry.prompt_tokens + LedgerEntry.completion_tokens)
            .where(LedgerEntry.key_id == key_id, LedgerEntry.created_at >= since,
                   or_(LedgerEntry.status < 400, LedgerEntry.prompt_tokens + LedgerEntry.completion_tokens > 0))
            .order_by(LedgerEntry.created_at)
        ).all()
    return [(r[0], int(r[1])) for r in rows]


GROUPS = {"key": LedgerEntry.key_id, "model": LedgerEntry.model, "day": LedgerEntry.day}


def usage(
    engine: Engine, group_by: Sequence[str], *, key_id: str | None = None, model: str | None = None,
    start: str | None = None, end: str | None = None,
) -> list[dict[str, Any]]:
    """Requests, tokens and cost grouped by any of key / model / day; start/end are inclusive days."""
    cols = [GROUPS[g].label(g if g != "key" else "key_id") for g in group_by]
    stmt = select(
        *cols,
        func.count(LedgerEntry.id).label("requests"),
        func.coalesce(func.sum(LedgerEntry.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(LedgerEntry.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0).label("cost_usd"),
    )
    if key_id is not None:
        stmt = stmt.where(LedgerEntry.key_id == key_id)
    if model is not None:
        stmt = stmt.where(LedgerEntry.model == model)
    if start is not None:
        stmt = stmt.where(LedgerEntry.day >= start)
    if end is not None:
        stmt = stmt.where(LedgerEntry.day <= end)
    groups = [GROUPS[g] for g in group_by]
    stmt = stmt.group_by(*groups).order_by(*groups)
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    out = []
    for r in rows:
        d = dict(r)
        d["prompt_tokens"], d["completion_tokens"] = int(d["prompt_tokens"]), int(d["completion_tokens"])
        d["total_tokens"] = d["prompt_tokens"] + d["completion_tokens"]
        d["cost_usd"] = float(d["cost_usd"])
        out.append(d)
    return out


def ledger_rows(engine: Engine, *, key_id: str | None = None, limit: int = 10_000,
                newest_first: bool = False) -> list[dict[str, Any]]:
    """Ledger rows in insertion order; `newest_first` (/spend/logs): the last `limit` rows, latest first."""
    stmt = select(LedgerEntry).order_by(LedgerEntry.id.desc() if newest_first else LedgerEntry.id).limit(limit)
    if key_id is not None:
        stmt = stmt.where(LedgerEntry.key_id == key_id)
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    cols = [c.key for c in LedgerEntry.__mapper__.column_attrs]
    return [{c: r[LedgerEntry.__table__.c[c]] for c in cols} for r in rows]


def request_owned_by(engine: Engine, request_id: str, key_id: str) -> bool:
    """True when `key_id` has a ledger row for `request_id` (who may score that request)."""
    stmt = (select(LedgerEntry.id).where(LedgerEntry.request_id == request_id, LedgerEntry.key_id == key_id)
            .limit(1))
    with engine.connect() as conn:
        return conn.execute(stmt).first() is not None


# ---- provider limits (accounts.provider_limits) ----
def save_provider_usage(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert each window's totals (the core sends absolute counts, so a repeat is harmless)."""
    with engine.begin() as conn:
        for r in rows:
            key = (ProviderUsage.model == r["model"], ProviderUsage.period == r["period"],
                   ProviderUsage.window_start == r["window_start"])
            done = conn.execute(update(ProviderUsage).where(*key).values(requests=r["requests"], tokens=r["tokens"]))
            if done.rowcount == 0:
                conn.execute(insert(ProviderUsage).values(**r))


def load_provider_usage(engine: Engine, wanted: Sequence[tuple[str, str, datetime]]) -> list[dict[str, Any]]:
    """The persisted totals of the given (model, period, window start) windows."""
    if not wanted:
        return []
    cond = or_(*((ProviderUsage.model == m) & (ProviderUsage.period == p) & (ProviderUsage.window_start == s)
                 for m, p, s in wanted))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(ProviderUsage).where(cond))]
