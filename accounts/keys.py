"""Virtual keys: generation, hashing and the admin request/response models.

Keys are 256-bit random tokens, so a plain sha256 is a safe at-rest form (no brute force is
feasible); only the hash and a short hint are stored, and the plain key is returned once.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEY_PREFIX = "sk-doka-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def key_hint(plain: str) -> str:
    return f"{KEY_PREFIX}...{plain[-4:]}"


def new_key_id() -> str:
    return uuid.uuid4().hex


def parse_duration(text: str) -> timedelta:
    """'30s', '15m', '12h', '7d' -> timedelta (LiteLLM's `duration` spelling)."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    text = text.strip()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"duration {text!r}: use a number and one of s, m, h, d (e.g. '30d')")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyLimits(_Body):
    """Everything an admin can set on a key; None means no limit."""

    key_alias: str | None = Field(None, max_length=200)
    team: str | None = Field(None, max_length=200)
    user: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None
    models: list[str] | None = Field(None, description="allowed model names; empty or absent: all")
    tokens_per_day: int | None = Field(None, ge=0)
    tokens_per_month: int | None = Field(None, ge=0)
    max_budget: float | None = Field(None, ge=0, description="USD")
    budget_period: Literal["day", "week", "month"] | None = Field(None, description="None: lifetime budget")
    rpm_limit: int | None = Field(None, ge=0)
    tpm_limit: int | None = Field(None, ge=0)
    duration: str | None = Field(None, description="expiry relative to now, e.g. '30d'")
    expires_at: datetime | None = None

    @field_validator("duration")
    @classmethod
    def _check_duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    def column_values(self, *, only_set: bool) -> dict[str, Any]:
        """Map API fields to `doka_keys` columns (only the fields the caller sent, for updates)."""
        data = self.model_dump(exclude_unset=only_set)
        out: dict[str, Any] = {}
        names = {"key_alias": "alias", "metadata": "meta"}
        for k, v in data.items():
            if k == "duration":
                continue
            if k == "expires_at" and v is not None and v.tzinfo is not None:
                v = v.astimezone(timezone.utc).replace(tzinfo=None)
            if k == "models" and v is None:
                v = []
            if k == "metadata" and v is None:
                v = {}
            out[names.get(k, k)] = v
        if data.get("duration") is not None:  # duration wins over an absent expires_at
            out["expires_at"] = datetime.now(timezone.utc).replace(tzinfo=None) + parse_duration(data["duration"])
        return out


class GenerateKeyRequest(KeyLimits):
    pass


class UpdateKeyRequest(KeyLimits):
    key: str | None = Field(None, description="the plain key")
    key_id: str | None = None


class DeleteKeyRequest(_Body):
    keys: list[str] = Field(default_factory=list, description="plain keys")
    key_ids: list[str] = Field(default_factory=list)


def public_key_info(row: dict[str, Any]) -> dict[str, Any]:
    """A key row as the admin API shows it: never the hash."""

    def iso(d: datetime | None) -> str | None:
        return d.replace(tzinfo=timezone.utc).isoformat() if d else None

    return {
        "key_id": row["id"],
        "key_hint": row["key_hint"],
        "key_alias": row["alias"],
        "team": row["team"],
        "user": row["user"],
        "metadata": row["meta"] or {},
        "models": row["models"] or [],
        "tokens_per_day": row["tokens_per_day"],
        "tokens_per_month": row["tokens_per_month"],
        "max_budget": row["max_budget"],
        "budget_period": row["budget_period"],
        "rpm_limit": row["rpm_limit"],
        "tpm_limit": row["tpm_limit"],
        "expires_at": iso(row["expires_at"]),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "revoked_at": iso(row["revoked_at"]),
    }
