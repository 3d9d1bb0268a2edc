"""Provider limits per model (requests and tokens per minute and per day): counting and admission.

Why: a free tier (Groq's 6,000 requests a day, Gemini's 1,500) answers 429 once it is used up,
and LiteLLM does not count for us. The accounts core holds one `ProviderLimiter` that every
ingress replica asks before calling a limited model (`admit`), so the decision is made in one
event loop with nothing awaited between the check and the hold: with any number of replicas a
limit of N admits N. A hold counts one request and the request's worst-case tokens; `settle`
replaces it with the tokens the call used (the request stays counted: the provider saw it),
`release` drops it (never sent). Both pop the hold, so whichever comes first wins and a
second call is a no-op: exactly once.

Windows are fixed: the clock minute (UTC) and the provider's calendar day in its
`reset_timezone` (zoneinfo, so DST days are 23 or 25 hours long). A hold belongs to the windows
it was admitted in; one settled after its window rolled over changes nothing in the new one.

Ray-free and clock-injected (`now`, epoch seconds), so the rules have fast unit tests; the core
persists `dirty()` windows in the accounts database and `load()`s them back on start.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable
from zoneinfo import ZoneInfo

MINUTE, DAY = "minute", "day"
# limit name -> (window, what it counts)
LIMITS = {"rpm": (MINUTE, "requests"), "tpm": (MINUTE, "tokens"), "rpd": (DAY, "requests"), "tpd": (DAY, "tokens")}
REASON_PREFIX = "provider_limit_"  # route reasons: `skipped=mock-groq:provider_limit_rpd`


def window_bounds(period: str, now: float, zone: ZoneInfo) -> tuple[float, float]:
    """(start, end) in epoch seconds of the `period` window that holds `now`."""
    if period == MINUTE:
        start = (int(now) // 60) * 60
        return float(start), float(start + 60)
    local = datetime.fromtimestamp(now, zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    nxt = midnight.date() + timedelta(days=1)
    return midnight.timestamp(), datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).timestamp()


@dataclass
class Window:
    """One model's counts in one window: used (settled) and held (admitted, not yet settled)."""

    start: float
    end: float
    requests: int = 0
    tokens: int = 0
    held_requests: int = 0
    held_tokens: int = 0

    def count(self, what: str) -> int:
        return (self.requests + self.held_requests) if what == "requests" else (self.tokens + self.held_tokens)


@dataclass
class Hold:
    id: str
    model: str
    tokens: int
    starts: dict[str, float]
    owner: str | None = None
    created: float = 0.0


@dataclass
class Refusal:
    """A model that cannot take one more request now: which limit, and seconds to its reset."""

    model: str
    limit: str  # rpm | tpm | rpd | tpd
    retry_after: float
    used: int
    allowed: int
    needed: int = 1  # what this request asked of the limit (tokens: its worst case)

    @property
    def reason(self) -> str:
        return f"{REASON_PREFIX}{self.limit}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "limit": self.limit, "retry_after": self.retry_after,
                "used": self.used, "allowed": self.allowed, "needed": self.needed}


@dataclass
class ProviderLimiter:
    """Every limited model's windows and open holds (see the module docstring)."""

    limits: dict[str, dict[str, Any]]  # model -> {rpm, tpm, rpd, tpd, reset_timezone}
    _windows: dict[tuple[str, str], Window] = field(default_factory=dict)
    _holds: dict[str, Hold] = field(default_factory=dict)
    _dirty: set[tuple[str, str]] = field(default_factory=set)
    _zones: dict[str, ZoneInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.limits = {m: {k: v for k, v in lim.items() if v is not None} for m, lim in self.limits.items()}
        self._zones = {m: ZoneInfo(lim.get("reset_timezone") or "UTC") for m, lim in self.limits.items()}

    def limited(self, model: str | None) -> bool:
        return model in self.limits

    def _window(self, model: str, period: str, now: float) -> Window:
        """The current window, a fresh one (nothing used or held) once the old one has ended."""
        w = self._windows.get((model, period))
        if w is None or now >= w.end or now < w.start:
            start, end = window_bounds(period, now, self._zones[model])
            w = self._windows[(model, period)] = Window(start, end)
        return w

    def _refusal(self, model: str, tokens: int, now: float) -> Refusal | None:
        """The limit one more request of `tokens` would break (the one resetting last), else None."""
        worst: Refusal | None = None
        for name, (period, what) in LIMITS.items():
            allowed = self.limits[model].get(name)
            if allowed is None:
                continue
            w = self._window(model, period, now)
            used, needed = w.count(what), (1 if what == "requests" else tokens)
            if used + needed > allowed or (what == "tokens" and used >= allowed):
                r = Refusal(model, name, max(w.end - now, 0.0), used, int(allowed), needed)
                if worst is None or r.retry_after > worst.retry_after:
                    worst = r
        return worst

    def admit(self, model: str, tokens: int, now: float, owner: str | None = None) -> Hold | Refusal | None:
        """Hold one request and `tokens` in every window of `model`; None: the model has no limits."""
        if model not in self.limits:
            return None
        refusal = self._refusal(model, tokens, now)
        if refusal is not None:
            return refusal
        hold = Hold(uuid.uuid4().hex, model, int(tokens), {}, owner, now)
        for period in (MINUTE, DAY):
            w = self._window(model, period, now)
            w.held_requests += 1
            w.held_tokens += hold.tokens
            hold.starts[period] = w.start
        self._holds[hold.id] = hold
        return hold

    def _close(self, hold_id: str, now: float, tokens: int | None) -> bool:
        hold = self._holds.pop(hold_id, None)
        if hold is None:
            return False  # settled or released already: exactly once
        for period, start in hold.starts.items():
            w = self._window(hold.model, period, now)
            if w.start != start:
                continue  # its window is over; the new one never held it
            w.held_requests -= 1
            w.held_tokens -= hold.tokens
            if tokens is not None:
                w.requests += 1
                w.tokens += max(int(tokens), 0)
                self._dirty.add((hold.model, period))
        return True

    def settle(self, hold_id: str, tokens: int, now: float) -> bool:
        """The call was made: count the request and the tokens it used. False: already closed."""
        return self._close(hold_id, now, tokens)

    def release(self, hold_id: str, now: float) -> bool:
        """The call was never made: drop the hold. False: already closed."""
        return self._close(hold_id, now, None)

    def orphaned(self, owners: set[str], older_than: float, now: float) -> list[str]:
        """Holds whose ingress replica is gone (or, ownerless, older than `older_than`): settled
        at their worst case, since nobody knows what the provider counted."""
        lost = [h for h in self._holds.values()
                if (h.owner in owners if h.owner is not None else h.created < older_than)]
        for h in lost:
            self.settle(h.id, h.tokens, now)
        return [h.id for h in lost]

    def used_up(self, models: Iterable[str], now: float) -> dict[str, Refusal]:
        """The models of `models` that cannot take even a minimal request now, and why."""
        out = {}
        for m in models:
            if m in self.limits and (r := self._refusal(m, 0, now)) is not None:
                out[m] = r
        return out

    def remaining(self, now: float) -> list[dict[str, Any]]:
        """Per model and configured limit: what is left in the current window (for /metrics)."""
        out = []
        for model, lim in self.limits.items():
            for name, (period, what) in LIMITS.items():
                if name in lim:
                    w = self._window(model, period, now)
                    out.append({"model": model, "limit": name, "remaining": max(int(lim[name]) - w.count(what), 0),
                                "reset_s": max(w.end - now, 0.0)})
        return out

    # ---- persistence (accounts.db.save_provider_usage / load_provider_usage)
    def dirty(self) -> list[dict[str, Any]]:
        """Windows changed since the last call, as database rows (start: naive UTC)."""
        rows = []
        for model, period in sorted(self._dirty):
            w = self._windows.get((model, period))
            if w is not None:
                rows.append({"model": model, "period": period, "window_start": _naive_utc(w.start),
                             "requests": w.requests, "tokens": w.tokens})
        self._dirty.clear()
        return rows

    def mark_dirty(self, rows: list[dict[str, Any]]) -> None:
        """Rows that could not be written: try them again next time."""
        self._dirty.update((r["model"], r["period"]) for r in rows)

    def wanted(self, now: float) -> list[tuple[str, str, datetime]]:
        """(model, period, window start) of every current window: what `load` needs."""
        return [(m, p, _naive_utc(window_bounds(p, now, self._zones[m])[0])) for m in self.limits for p in (MINUTE, DAY)]

    def load(self, rows: list[dict[str, Any]], now: float) -> None:
        """Counts persisted before a restart, for the windows still current."""
        for r in rows:
            if r["model"] not in self.limits:
                continue
            w = self._window(r["model"], r["period"], now)
            if _naive_utc(w.start) == r["window_start"]:
                w.requests = max(w.requests, int(r["requests"]))
                w.tokens = max(w.tokens, int(r["tokens"]))

    def open_holds(self) -> int:
        return len(self._holds)

    def in_flight(self) -> dict[str, int]:
        """Open holds per limited model: calls admitted and not yet settled."""
        out = dict.fromkeys(self.limits, 0)
        for h in self._holds.values():
            out[h.model] += 1
        return out


def _naive_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)
