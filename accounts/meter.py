"""In-memory counters for one key: minute windows, calendar quotas, budget, reservations.

Pure and synchronous on purpose: the accounts actor calls `check_and_reserve` with no await in
between, so concurrent requests from any number of ingress replicas see one consistent count
and a request is admitted only when its worst case fits in what is left of every quota.
"""

from __future__ import annotations

import calendar
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from accounts.errors import AccountsError, too_many

WINDOW_S = 60.0
PERIODS = ("day", "week", "month")
EPOCH = datetime(1970, 1, 1)


def to_naive_utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)


def period_start(period: str | None, now: datetime) -> datetime:
    """Start (naive UTC) of the calendar period holding `now`; None means lifetime."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return EPOCH


def period_end(period: str | None, now: datetime) -> datetime | None:
    start = period_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    if period == "month":
        return start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
    return None


class Window:
    """Sliding 60 s sum of (time, amount) events."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def _prune(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - WINDOW_S:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: float) -> None:
        self.events.append((now, amount))
        self.total += amount

    def sum(self, now: float) -> float:
        self._prune(now)
        return self.total

    def retry_after(self, now: float) -> float:
        self._prune(now)
        return (self.events[0][0] + WINDOW_S - now) if self.events else 1.0


@dataclass
class PeriodCounter:
    """A running total that resets when its calendar period rolls over."""

    period: str | None
    start: datetime = EPOCH
    value: float = 0.0

    def roll(self, now: datetime) -> None:
        s = period_start(self.period, now)
        if s != self.start:
            self.start, self.value = s, 0.0

    def seconds_left(self, now: datetime) -> float | None:
        end = period_end(self.period, now)
        return None if end is None else (end - now).total_seconds()


@dataclass
class Reservation:
    key_id: str
    tokens: int
    cost: float
    created: float
    owner: str | None = None  # the ingress replica that must settle it (see AccountsCore.heartbeat)
    request_id: str | None = None
    model: str | None = None


@dataclass
class KeyMeter:
    """Counters of one key. Reserved amounts count against every limit until settled."""

    budget_period: str | None = None
    day: PeriodCounter = field(default_factory=lambda: PeriodCounter("day"))
    month: PeriodCounter = field(default_factory=lambda: PeriodCounter("month"))
    budget: PeriodCounter = field(default_factory=lambda: PeriodCounter(None))
    requests: Window = field(default_factory=Window)
    tokens: Window = field(default_factory=Window)
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    inflight: int = 0

    @classmethod
    def rebuild(
        cls, budget_period: str | None, now: float, day_tokens: int, month_tokens: int, budget_cost: float,
        events: list[tuple[datetime, int]],
    ) -> "KeyMeter":
        """Counters as the ledger says they stand, so a restart resets no quota."""
        m = cls(budget_period=budget_period, budget=PeriodCounter(budget_period))
        dt = to_naive_utc(now)
        for c, v in ((m.day, day_tokens), (m.month, month_tokens), (m.budget, budget_cost)):
            c.roll(dt)
            c.value = v
        for t, tok in events:
            ts = t.replace(tzinfo=timezone.utc).timestamp()
            m.requests.add(ts, 1)
            m.tokens.add(ts, tok)
        return m

    def check(self, limits: dict[str, Any], est_tokens: int, est_cost: float, now: float) -> AccountsError | None:
        """The first limit this request would break, or None.

        `est_tokens`/`est_cost` are the request's worst case (accounts.estimate.reservation): it is
        admitted only when that fits in what is left after what is spent and what other requests
        hold, so concurrent requests can never spend past a quota together.
        """
        dt = to_naive_utc(now)
        for c in (self.day, self.month, self.budget):
            c.roll(dt)
        rpm, tpm = limits.get("rpm_limit"), limits.get("tpm_limit")
        if rpm is not None and self.requests.sum(now) >= rpm:
            return too_many(f"rate limit: {rpm} requests per minute", "rate_limit_exceeded",
                            self.requests.retry_after(now))
        hint = " (lower max_tokens or n to ask for less)"
        if tpm is not None and self.tokens.sum(now) + self.reserved_tokens + est_tokens > tpm:
            used = int(self.tokens.sum(now))
            wait = self.tokens.retry_after(now) if self.tokens.events else 1.0
            return too_many(f"rate limit: {tpm} tokens per minute; this request may use up to {est_tokens} "
                            f"tokens, {used} used and {self.reserved_tokens} held in the last minute{hint}",
                            "rate_limit_exceeded", wait)
        for name, counter in (("day", self.day), ("month", self.month)):
            quota = limits.get(f"tokens_per_{name}")
            if quota is not None and counter.value + self.reserved_tokens + est_tokens > quota:
                used = int(counter.value)
                left = max(quota - used - self.reserved_tokens, 0)
                wait = counter.seconds_left(dt) if used + est_tokens > quota else 1.0
                return too_many(f"token quota exhausted: this request may use up to {est_tokens} tokens, {left} "
                                f"of {quota} left this {name} ({used} used, {self.reserved_tokens} held by "
                                f"requests in flight){hint}", "insufficient_quota", wait)
        budget = limits.get("max_budget")
        if budget is not None and self.budget.value + self.reserved_cost + est_cost > budget:
            spent = self.budget.value
            left = max(budget - spent - self.reserved_cost, 0.0)
            wait = self.budget.seconds_left(dt) if spent + est_cost > budget else 1.0
            period = self.budget_period or "lifetime of the key"
            return too_many(f"budget exceeded: this request may cost up to ${est_cost:.6f}, ${left:.6f} of "
                            f"${budget:.6f} left ({period}; ${spent:.6f} spent){hint}", "budget_exceeded", wait)
        return None

    def reserve(self, key_id: str, est_tokens: int, est_cost: float, now: float) -> Reservation:
        self.requests.add(now, 1)
        self.reserved_tokens += est_tokens
        self.reserved_cost += est_cost
        self.inflight += 1
        return Reservation(key_id, est_tokens, est_cost, now)

    def release(self, r: Reservation) -> None:
        self.reserved_tokens -= r.tokens
        self.reserved_cost -= r.cost
        self.inflight -= 1

    def commit(self, tokens: int, cost: float, now: float) -> None:
        dt = to_naive_utc(now)
        for c in (self.day, self.month, self.budget):
            c.roll(dt)
        self.day.value += tokens
        self.month.value += tokens
        self.budget.value += cost
        self.tokens.add(now, tokens)

    def snapshot(self, now: float) -> dict[str, Any]:
        dt = to_naive_utc(now)
        for c in (self.day, self.month, self.budget):
            c.roll(dt)
        return {
            "tokens_today": int(self.day.value),
            "tokens_this_month": int(self.month.value),
            "spend_usd": self.budget.value,
            "budget_period_start": self.budget.start.isoformat() if self.budget_period else None,
            "requests_last_minute": int(self.requests.sum(now)),
            "tokens_last_minute": int(self.tokens.sum(now)),
            "reserved_tokens": self.reserved_tokens,
            "inflight": self.inflight,
        }
