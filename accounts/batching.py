"""Group commit for actor calls: concurrent callers share one round trip.

A Ray actor call costs the ingress far more CPU than the accounts work it carries (task
submission, serialization, the actor's own dispatch), and there are two per request. The
`Coalescer` sends a call at once when idle and, while a batch is in flight, queues the rest;
when it returns, everything queued goes in the next batch. Once batches hold more than one
item (the gateway is busy) it lingers `linger_s` before each send so more can join. An idle
gateway pays no added latency; a busy one pays one round trip per batch instead of per
request. The accounts core still decides each item on its own, in order, so admission
semantics do not change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[list[Any]], Awaitable[list[Any]]]


class Coalescer:
    """Batches `submit(item)` calls into `send(items) -> results` (same order, same length)."""

    def __init__(self, send: Send, max_batch: int = 512, linger_s: float = 0.002) -> None:
        self._send = send
        self.max_batch, self.linger_s = max_batch, linger_s
        self._last_size = 0
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._draining: asyncio.Task | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: Any) -> Any:
        return await self.enqueue(item)

    def enqueue(self, item: Any) -> asyncio.Future:
        """Queue `item`; the future gets its result (a caller may stop waiting and still read it)."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self._last_size > 1 and self.linger_s > 0:  # busy: let a few more join
                    await asyncio.sleep(self.linger_s)
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                self.batches += 1
                self.items += len(batch)
                self._last_size = len(batch)
                try:
                    results = await self._send([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch of {len(batch)} answered with {len(results)} results")
                except Exception as e:  # every caller of this batch sees the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), result in zip(batch, results):
                    if not fut.done():  # a caller that gave up (cancelled) just drops its answer
                        fut.set_result(result)
        finally:
            self._draining = None
