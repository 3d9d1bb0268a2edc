"""SQLAlchemy 2 models: one schema for SQLite and PostgreSQL.

Times are naive UTC (`utcnow()`), which both back ends store the same way. The `day`
column is the UTC date as text so per-day usage groups portably and cheaply.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Key(Base):
    """A virtual key. Only the sha256 of the key is stored; the plain key is shown once."""

    __tablename__ = "doka_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    key_hint: Mapped[str] = mapped_column(String(32))  # e.g. "sk-doka-...a1b2", for listings
    alias: Mapped[str | None] = mapped_column(String(200))
    team: Mapped[str | None] = mapped_column(String(200), index=True)
    user: Mapped[str | None] = mapped_column(String(200), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every model
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    tokens_per_month: Mapped[int | None] = mapped_column(BigInteger)
    max_budget: Mapped[float | None] = mapped_column(Float)
    budget_period: Mapped[str | None] = mapped_column(String(16))  # day | week | month | None (lifetime)
    rpm_limit: Mapped[int | None] = mapped_column(Integer)
    tpm_limit: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class LedgerEntry(Base):
    """One request: who, which model, tokens, cost, latency, outcome, why that model."""

    __tablename__ = "doka_ledger"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    request_id: Mapped[str | None] = mapped_column(String(100), index=True)
    key_id: Mapped[str | None] = mapped_column(String(32))
    model_requested: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    route_reason: Mapped[str | None] = mapped_column(Text)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    day: Mapped[str] = mapped_column(String(10))
    client_request_id: Mapped[str | None] = mapped_column(String(128))  # the client's x-request-id, if valid
    row_uid: Mapped[str | None] = mapped_column(String(32))  # unique: a spool replay inserts a row once

    __table_args__ = (
        Index("ix_doka_ledger_key_created", "key_id", "created_at"),
        Index("ix_doka_ledger_day", "day"),
        Index("ux_doka_ledger_row_uid", "row_uid", unique=True),
    )


class ProviderUsage(Base):
    """What doka sent a limited model in one provider window (accounts.provider_limits), so a
    restart does not hand a used-up free tier a fresh allowance."""

    __tablename__ = "doka_provider_usage"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)  # minute | day
    window_start: Mapped[datetime] = mapped_column(DateTime, primary_key=True)  # naive UTC
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
