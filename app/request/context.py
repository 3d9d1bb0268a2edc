"""One request, one object: who asked, what was decided, what answered, and the one way out.

Every exit of a request (answer, error, client cancel, timeout, a stream cut short or never
started) calls `ctx.settle(status)`; only the first call counts, so the ledger row, the
provider-limit hold and the trace are written exactly once whichever exit came first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from router.decision import RouteDecision


class Settler(Protocol):
    """Writes a settled request down (app/request/ledger.py `Ledger`)."""

    def start(self, ctx: "RequestContext", status: int, usage: dict | None) -> "asyncio.Task | None": ...


@dataclass
class RequestContext:
    """Created once per request by `GatewayCore.serve` and passed down the path.

    `side`: the other calls made for this answer (a cascade's weak and verifier) as (model,
    usage), charged with it. `usage`: the answer's usage when known before a stream starts (a
    replayed cascade answer). `hold`: a stream's provider-limit hold, released with the settle.
    """

    id: str
    kind: str  # chat, completion or embedding (the backend method called)
    requested: str  # the public name the client asked for
    stream: bool
    settler: Settler
    started: float = field(default_factory=time.perf_counter)
    grant: Any = None  # the accounts grant (None with keys off)
    decision: RouteDecision | None = None  # the router's, for `auto`
    model: str | None = None  # the tier that answered
    reason: str | None = None  # the route reason (x-doka-route-reason)
    tried: list[str] = field(default_factory=list)
    side: list[tuple[str, dict]] = field(default_factory=list)
    usage: dict | None = None
    hold: str | None = None
    status: int | None = None  # set by the settle
    _task: "asyncio.Task | None" = field(default=None, repr=False)

    @property
    def settled(self) -> bool:
        return self.status is not None

    def answered_by(self, attempt: Any) -> None:
        """Record the tier run's outcome (app/request/run.py `Attempt`) on the request."""
        self.model, self.reason, self.tried = attempt.model, attempt.reason, attempt.tried
        self.side, self.usage, self.hold = attempt.side, attempt.usage, attempt.hold

    def settle(self, status: int, usage: dict | None = None) -> bool:
        """Settle the request with this status and usage; False when it was already settled.

        The ledger write runs as a task of its own (`Ledger.start`): a client gone mid-request
        cancels the request's coroutine, never its ledger row."""
        if self.status is not None:
            return False
        self.status = status
        self._task = self.settler.start(self, status, usage if usage is not None else self.usage)
        return True

    async def settle_and_wait(self, status: int, usage: dict | None = None) -> None:
        """`settle`, then wait for the ledger write (shielded: a cancelled caller leaves it running).

        An answer waits for it so a replica killed right after the response cannot lose the row;
        a failed write is logged by the ledger and never breaks the answer."""
        if not self.settle(status, usage) or self._task is None:
            return
        try:
            await asyncio.shield(self._task)
        except Exception:
            pass

    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000
