"""Read queries behind the console's pages (requests, one request, spend by key/team/model/day).

Plain functions over the accounts engine, run by `AccountsCore.console_query` after a flush, so
a page shows every settled request. Each reads through an index (ledger id, day, request_id) or
a bounded slice, so pages stay fast on a large ledger (`python -m load.bench_console`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from accounts.models import Key, LedgerEntry

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


def spend(engine: Engine, group_by: str, *, start: str | None = None, end: str | None = None,
          key_id: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Requests, tokens and USD per key, team (through the key), model or day; days inclusive."""
    if group_by not in SPEND_GROUPS:
        raise ValueError(f"group_by must be one of {SPEND_GROUPS}")
    col = {"key": LedgerEntry.key_id, "team": Key.team, "model": LedgerEntry.model, "day": LedgerEntry.day}[group_by]
    stmt = select(
        col.label("group"),
        func.count(LedgerEntry.id).label("requests"),
        func.coalesce(func.sum(LedgerEntry.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(LedgerEntry.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(LedgerEntry.cost_usd), 0.0).label("cost_usd"),
    )
    if group_by == "team":
        stmt = stmt.select_from(LedgerEntry).outerjoin(Key, Key.id == LedgerEntry.key_id)
    if start:
        stmt = stmt.where(LedgerEntry.day >= start)
    if end:
        stmt = stmt.where(LedgerEntry.day <= end)
    if key_id:
        stmt = stmt.where(LedgerEntry.key_id == key_id)
    order = col if group_by == "day" else func.sum(LedgerEntry.cost_usd).desc()
    stmt = stmt.group_by(col).order_by(order).limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    out = []
    for r in rows:
        p, c = int(r["prompt_tokens"]), int(r["completion_tokens"])
        out.append({"group": r["group"], "requests": int(r["requests"]), "prompt_tokens": p, "completion_tokens": c,
                    "total_tokens": p + c, "cost_usd": float(r["cost_usd"])})
    return out


QUERIES = {"recent_requests": recent_requests, "request_rows": request_rows, "spend": spend}
