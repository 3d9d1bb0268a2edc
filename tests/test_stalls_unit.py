"""deployments/stalls.py without Ray: the timeouts each tier gets, and the two ways a stream stalls."""

from __future__ import annotations

import asyncio

import pytest

from app.config import parse_config
from app.errors import OpenAIError
from deployments import stalls


def _cfg(**info) -> object:
    return parse_config({"model_list": [
        {"model_name": "a", "litellm_params": {"model": "openai/a"}, "model_info": {"timeout": 10, **info}}]})


def test_timeouts_default_to_the_tier_timeout_and_never_exceed_it():
    assert stalls.tier_timeouts(_cfg())["a"] == stalls.TierTimeouts(10, 10, False)
    assert stalls.tier_timeouts(_cfg(first_token_timeout_s=2, stream_idle_timeout_s=3))["a"] == \
        stalls.TierTimeouts(2, 3, True)
    assert stalls.tier_timeouts(_cfg(first_token_timeout_s=60, stream_idle_timeout_s=60))["a"] == \
        stalls.TierTimeouts(10, 10, False)


def test_bad_timeouts_are_config_errors():
    from app.config import ConfigError

    for bad in ({"first_token_timeout_s": 0}, {"stream_idle_timeout_s": -1}, {"first_token_timeout_s": "soon"}):
        with pytest.raises(ConfigError):
            _cfg(**bad)


async def _source(first_gap: float, then_gap: float, n: int = 3):
    await asyncio.sleep(first_gap)
    yield {"i": 0}
    for i in range(1, n):
        await asyncio.sleep(then_gap)
        yield {"i": i}


def test_first_chunk_names_a_configured_first_token_timeout():
    t = stalls.TierTimeouts(0.05, 1, True)
    with pytest.raises(stalls.FirstTokenTimeout, match="first_token_timeout"):
        asyncio.run(stalls.first_chunk(_source(5, 0).__aiter__(), "a", t, 1))
    unset = stalls.TierTimeouts(0.05, 1, False)  # the tier's own timeout: as before, a plain timeout
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(stalls.first_chunk(_source(5, 0).__aiter__(), "a", unset, 0.05))
    assert asyncio.run(stalls.first_chunk(_source(0, 0).__aiter__(), "a", t, 1)) == {"i": 0}


def test_chunks_end_with_stream_stalled_only_when_the_upstream_is_slow():
    async def collect(src, idle):
        got = []
        try:
            async for c in stalls.chunks(src, "a", idle):
                got.append(c["i"])
                await asyncio.sleep(0.2)  # a slow reader: not the tier's fault
        except stalls.StreamStalled as e:
            return got, e
        return got, None

    got, err = asyncio.run(collect(_source(0, 0.01), 0.1))
    assert got == [0, 1, 2] and err is None
    got, err = asyncio.run(collect(_source(0, 5), 0.1))
    assert got == [0] and isinstance(err, stalls.StreamStalled)
    e = err.error()
    assert isinstance(e, OpenAIError) and e.status == 504 and e.body()["error"]["code"] == "stream_stalled"
    assert set(e.body()["error"]) == {"message", "type", "param", "code"}


def test_fallback_reason():
    assert stalls.fallback_reason(2, []) == "fallback:tier2"
    assert stalls.fallback_reason(3, ["a", "b"]) == "fallback:tier3:first_token_timeout=a+b"


def test_a_cancellation_from_outside_is_not_taken_for_a_stall():
    async def main():
        async def consume():
            async for _ in stalls.chunks(_source(0, 5), "a", 10):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "not cancelled"

    assert asyncio.run(main()) == "cancelled"


def test_an_upstream_that_turns_the_cancellation_into_its_own_error_still_reads_as_a_stall():
    async def wrapping():
        yield {"i": 0}
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise RuntimeError("client library: request aborted") from None
        yield {"i": 1}

    async def main():
        got = []
        try:
            async for c in stalls.chunks(wrapping(), "a", 0.1):
                got.append(c["i"])
        except stalls.StreamStalled:
            return got, asyncio.current_task().cancelling()
        return got, None

    assert asyncio.run(main()) == ([0], 0)  # stalled, and no cancellation left pending on the task
