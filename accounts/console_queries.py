"""Read queries behind the console's pages (requests, one request, spend by key/team/model/day).

Plain functions over the accounts engine, run by `AccountsCore.console_query` after a flush, so
a page shows every settled request. Each reads through an index (ledger id, day, request_id) or
a bounded slice, so pages stay fast on a large ledger (`python -m load.bench_console`).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import BigInteger, Column, Float, MetaData, String, Table, func, literal, select, union_all
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from accounts.models import Key, LedgerEntry

# Spend per (day, key, model) for days that are over (migration 0003); rebuilt lazily by `spend`.
SPEND_DAILY = Table(
    "doka_spend_daily", MetaData(),
    Column("day", String(10), primary_key=True), Column("key_id", String(32), primary_key=True),
    Column("model", String(200), primary_key=True), Column("requests", BigInteger), Column("prompt_tokens", BigInteger),
    Column("completion_tokens", BigInteger), Column("cost_usd", Float),
)
_rollup_lock = threading.Lock()

SPEND_GROUPS = ("key", "team", "model", "day")
REQUEST_COLUMNS = ("id", "request_id", "key_id", "model_requested", "model", "prompt_tokens", "completion_tokens",
                   "cost_usd", "latency_ms", "status", "route_reason", "stream", "created_at")


def _row(r: Any) -> dict[str, Any]:
    d = {c: r[c] for c in REQUEST_COLUMNS}
    if isinstance(d["created_at"], datetime):
        d["created_at"] = d["created_at"].replace(tzinfo=timezone.utc).isoformat(timespec="seconds")
    return d


def recent_requests(engine: Engine, *, key_id: str | None = None, model: str | None = None,
                    errors_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ledger rows first (primary-key order: no sort over the table)."""
    cols = [LedgerEntry.__table__.c[c] for c in REQUEST_COLUMNS]
    stmt = select(*cols).order_by(LedgerEntry.id.desc()).limit(max(1, min(limit, 1000)))
    if key_id:
        stmt = stmt.where(LedgerEntry.key_id == key_id)
    if model:
        stmt = stmt.where(LedgerEntry.model == model)
    if errors_only:
        stmt = stmt.where(LedgerEntry.status >= 400)
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(stmt).mappings().all()]


def request_rows(engine: Engine, request_id: str) -> list[dict[str, Any]]:
    """Every ledger row of one request (a cascade settles one per upstream call)."""
    cols = [LedgerEntry.__table__.c[c] for c in REQUEST_COLUMNS]
    stmt = select(*cols).where(LedgerEntry.request_id == request_id).order_by(LedgerEntry.id)
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(stmt).mappings().all()]


def rollup_cutoff(now: datetime | None = None) -> str:
    """Days before this one are rolled up; yesterday and today are read live (late settlements)."""
    now = now or datetime.now(timezone.utc)
    return (now - timedelta(days=1)).strftime("%Y-%m-%d")


def refresh_rollup(engine: Engine, cutoff: str) -> int:
    """Roll up the finished days not yet in `doka_spend_daily` (one indexed pass); rows added."""
    L = LedgerEntry
    with _rollup_lock, engine.begin() as conn:
        done = conn.execute(select(func.max(SPEND_DAILY.c.day))).scalar() or ""
        if not conn.execute(select(L.day).where(L.day > done, L.day < cutoff).limit(1)).first():
            return 0
        key, model = func.coalesce(L.key_id, literal("")), func.coalesce(L.model, literal(""))
        rows = select(L.day, key, model, func.count(L.id), func.coalesce(func.sum(L.prompt_tokens), 0),
                      func.coalesce(func.sum(L.completion_tokens), 0), func.coalesce(func.sum(L.cost_usd), 0.0)) \
            .where(L.day > done, L.day < cutoff).group_by(L.day, key, model)
        try:
            return conn.execute(SPEND_DAILY.insert().from_select(list(SPEND_DAILY.c.keys()), rows)).rowcount
        except IntegrityError:  # another process rolled the same days up first
            return 0


def _spend_rows(cutoff: str, start: str | None, end: str | None, key_id: str | None):
    """(day, key_id, model, requests, prompt, completion, cost): rollup before `cutoff`, ledger after."""
    L, R = LedgerEntry, SPEND_DAILY.c
    old = select(R.day, R.key_id, R.model, R.requests, R.prompt_tokens, R.completion_tokens, R.cost_usd) \
        .where(R.day < cutoff)
    key, model = func.coalesce(L.key_id, literal("")), func.coalesce(L.model, literal(""))
    new = select(L.day.label("day"), key.label("key_id"), model.label("model"), func.count(L.id).label("requests"),
                 func.sum(L.prompt_tokens).label("prompt_tokens"),
                 func.sum(L.completion_tokens).label("completion_tokens"), func.sum(L.cost_usd).label("cost_usd")) \
        .where(L.day >= cutoff).group_by(L.day, key, model)
    if start:
        old, new = old.where(R.day >= start), new.where(L.day >= start)
    if end:
        old, new = old.where(R.day <= end), new.where(L.day <= end)
    if key_id:
        old, new = old.where(R.key_id == key_id), new.where(L.key_id == key_id)
    return union_all(old, new)


def spend(engine: Engine, group_by: str, *, start: str | None = None, end: str | None = None,
          key_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Requests, tokens and USD per key, team (through the key), model or day; days inclusive.

    Finished days come from the rollup, the last two from the ledger (through its day index)."""
    if group_by not in SPEND_GROUPS:
        raise ValueError(f"group_by must be one of {SPEND_GROUPS}")
    cutoff = rollup_cutoff()
    refresh_rollup(engine, cutoff)
    u = _spend_rows(cutoff, start, end, key_id).subquery()
    col = {"key": u.c.key_id, "team": Key.team, "model": u.c.model, "day": u.c.day}[group_by]
    stmt = select(
        col.label("group"),
        func.coalesce(func.sum(u.c.requests), 0).label("requests"),
        func.coalesce(func.sum(u.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(u.c.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(u.c.cost_usd), 0.0).label("cost_usd"),
    ).select_from(u)
    if group_by == "team":
        stmt = stmt.outerjoin(Key, Key.id == u.c.key_id)
    order = col if group_by == "day" else func.sum(u.c.cost_usd).desc()
    stmt = stmt.group_by(col).order_by(order).limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    out = []
    for r in rows:
        p, c = int(r["prompt_tokens"]), int(r["completion_tokens"])
        out.append({"group": r["group"] or None, "requests": int(r["requests"]), "prompt_tokens": p, "completion_tokens": c,
                    "total_tokens": p + c, "cost_usd": float(r["cost_usd"])})
    return out


def auto_decisions(engine: Engine, *, start: str, limit_reasons: int = 20) -> dict[str, list[dict[str, Any]]]:
    """What `auto` did since `start` (a day): requests, tokens and USD per day and answering model,
    and the most frequent route reasons (reads through the day index)."""
    L = LedgerEntry
    where = (L.day >= start, L.model_requested == "auto")
    by_day = select(L.day, L.model, func.count(L.id), func.coalesce(func.sum(L.prompt_tokens), 0),
                    func.coalesce(func.sum(L.completion_tokens), 0), func.coalesce(func.sum(L.cost_usd), 0.0)) \
        .where(*where).group_by(L.day, L.model).order_by(L.day, L.model)
    reasons = select(L.route_reason, func.count(L.id).label("n")).where(*where) \
        .group_by(L.route_reason).order_by(func.count(L.id).desc()).limit(limit_reasons)
    with engine.connect() as conn:
        days = [{"day": d, "model": m, "requests": int(n), "prompt_tokens": int(p), "completion_tokens": int(c),
                 "cost_usd": float(cost)} for d, m, n, p, c, cost in conn.execute(by_day)]
        why = [{"reason": r, "requests": int(n)} for r, n in conn.execute(reasons)]
    return {"by_day_model": days, "reasons": why}


QUERIES = {"auto_decisions": auto_decisions, "recent_requests": recent_requests, "request_rows": request_rows, "spend": spend}
