"""Stream stalls: each tier's time-to-first-token and inter-chunk idle timeouts.

Why: a tier that never starts a stream (a queued vLLM request, a wedged Ollama) or stops
mid-way used to hold the request for the tier's whole `timeout`. Per tier
(`model_info.first_token_timeout_s`, `model_info.stream_idle_timeout_s`, both at most the tier's
`timeout`, which is also their default):

- before the first chunk reached the client, a tier that sends none in time is left and the
  chain's next tier is asked (`FirstTokenTimeout`; route reason
  `fallback:tierN:first_token_timeout=<model>`);
- after it, a gap longer than the idle timeout ends the stream with an OpenAI error event
  (`StreamStalled.error()`, code `stream_stalled`), charged for what was delivered.

Ray-free and small, so the gateway core (app/request/run.py, stream.py) only asks it for numbers and errors.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator

from app.config import DokaConfig
from app.errors import OpenAIError

STALLED_STATUS = 504  # the ledger row's status and the error event's type (timeout_error)


class FirstTokenTimeout(Exception):
    """A tier sent no first chunk within its `first_token_timeout_s`."""

    def __init__(self, model: str, seconds: float) -> None:
        super().__init__(f"{model}: no first chunk within {seconds:g}s (first_token_timeout)")
        self.model, self.seconds = model, seconds


class StreamStalled(Exception):
    """A started stream sent nothing for longer than its tier's idle timeout."""

    def __init__(self, model: str, seconds: float) -> None:
        super().__init__(f"{model} sent no chunk for {seconds:g}s mid-stream (stream_idle_timeout_s)")
        self.model, self.seconds = model, seconds

    def error(self) -> OpenAIError:
        return OpenAIError(STALLED_STATUS, f"{self}: the stream was ended; what was delivered is charged",
                           code="stream_stalled")


@dataclass(frozen=True)
class TierTimeouts:
    """One tier's stream timeouts in seconds; `first_token_set`: configured, not the default."""

    first_token: float
    idle: float
    first_token_set: bool


def tier_timeouts(cfg: DokaConfig) -> dict[str, TierTimeouts]:
    """Every model's stream timeouts: configured values capped at `timeout`, else `timeout`."""
    out = {}
    for m in cfg.model_list:
        mi = m.model_info
        first = min(mi.first_token_timeout_s or mi.timeout, mi.timeout)
        idle = min(mi.stream_idle_timeout_s or mi.timeout, mi.timeout)
        out[m.model_name] = TierTimeouts(first, idle, mi.first_token_timeout_s is not None and first < mi.timeout)
    return out


async def first_chunk(it: AsyncIterator[Any], model: str, t: TierTimeouts | None, timeout: float) -> Any:
    """The stream's first chunk within the tier's first-token timeout.

    Raises FirstTokenTimeout when a configured first-token timeout (shorter than the tier's)
    fired, asyncio.TimeoutError when the tier's own timeout did (as before these settings)."""
    wait = t.first_token if t is not None else timeout
    try:
        return await asyncio.wait_for(it.__anext__(), wait)
    except asyncio.TimeoutError:
        if t is not None and t.first_token_set:
            raise FirstTokenTimeout(model, wait) from None
        raise


async def chunks(it: AsyncIterator[Any], model: str, idle: float | None) -> AsyncIterator[Any]:
    """`it`'s chunks; StreamStalled when one takes longer than `idle` seconds to come.

    The clock runs only while waiting for the upstream, not while the consumer (the client's
    connection) holds a chunk, so a slow reader is never taken for a stalled tier. One timer per
    stream, moved lazily (a chunk only writes its deadline; the timer, when it fires early, sets
    itself to the newer deadline): about 1 us a chunk, where `asyncio.timeout` around each wait
    costs about 7 (one timer per chunk).
    """
    if idle is None:
        async for chunk in it:
            yield chunk
        return
    loop = asyncio.get_running_loop()
    waiting: asyncio.Task | None = None  # the task awaiting the upstream, while it does
    deadline = 0.0
    fired = False
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle, fired
        handle = None
        if waiting is None:  # the consumer holds a chunk: the next wait starts the timer again
            return
        if loop.time() >= deadline:
            fired = True
            waiting.cancel()
        else:
            handle = loop.call_at(deadline, check)

    try:
        while True:
            deadline = loop.time() + idle
            waiting = asyncio.current_task()
            if handle is None:
                handle = loop.call_at(deadline, check)
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if fired and waiting is not None and waiting.uncancel() == 0:  # ours, nobody else's
                    raise StreamStalled(model, idle) from None
                raise
            except Exception:  # an upstream client that turned our cancellation into its own error
                if fired and waiting is not None:
                    waiting.uncancel()
                    raise StreamStalled(model, idle) from None
                raise
            finally:
                waiting = None
            yield chunk
    finally:
        if handle is not None:
            handle.cancel()


def fallback_reason(tier: int, first_token_missed: list[str]) -> str:
    """The route reason of tier `tier` (1-based, > 1) answering: `fallback:tierN`, naming the
    tiers left for a missed first-token timeout (`:first_token_timeout=a+b`)."""
    reason = f"fallback:tier{tier}"
    return f"{reason}:first_token_timeout={'+'.join(first_token_missed)}" if first_token_missed else reason
