"""The group commit the ingress uses for its accounts calls: order, failures, cancelled callers."""

from __future__ import annotations

import asyncio

import pytest

from accounts.batching import Coalescer


class Recorder:
    """A `send` that records its batches and takes one loop turn per round trip."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(0.01)
        if self.fail_on in items:
            raise ConnectionError("core unreachable")
        return [i * 10 for i in items]


async def test_calls_made_while_a_round_trip_is_in_flight_share_the_next_one():
    send = Recorder()
    c = Coalescer(send)
    first = asyncio.ensure_future(c.submit(0))
    await asyncio.sleep(0)  # the first call is on its way, alone: no timer, no added latency
    results = await asyncio.gather(*(c.submit(i) for i in range(1, 20)))
    assert await first == 0 and results == [i * 10 for i in range(1, 20)]
    assert send.batches == [[0], list(range(1, 20))]
    assert await c.submit(99) == 990  # idle again: sent at once
    assert send.batches[-1] == [99]


async def test_a_failed_round_trip_fails_its_callers_only():
    send = Recorder(fail_on=3)
    c = Coalescer(send)
    first = asyncio.ensure_future(c.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(c.submit(i)) for i in (1, 2, 3)]
    assert await first == 0
    for f in rest:
        with pytest.raises(ConnectionError):
            await f
    assert await c.submit(4) == 40  # the next batch is unaffected


async def test_a_cancelled_caller_does_not_break_its_batch():
    send = Recorder()
    c = Coalescer(send, max_batch=2)
    calls = [asyncio.ensure_future(c.submit(i)) for i in range(5)]
    await asyncio.sleep(0)
    calls[1].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[i] for i in (0, 2, 3, 4)] == [0, 20, 30, 40]
    assert all(len(b) <= 2 for b in send.batches)
