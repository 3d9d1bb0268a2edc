"""A streamed answer as server-sent events, settled however it ends.

Chunks go out as they come. An error after the first chunk, or a gap past the tier's
`stream_idle_timeout_s`, ends the stream with an error event (the headers are gone: no status
code can change). The request is settled with what was delivered, exactly once, by whichever
comes first: the normal end (before `[DONE]`, and waited for), the generator's `finally` (an
error or a client gone mid-stream), or the response closing a stream whose generator never ran.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, AsyncIterator, Callable

from starlette.responses import Response, StreamingResponse

from app.errors import OpenAIError, UpstreamError
from app.request import respond
from app.request.context import RequestContext
from app.request.run import unwrap
from deployments import stalls

logger = logging.getLogger("ray.serve")


def ask_usage(body: dict[str, Any]) -> bool:
    """Make a chat/completions stream ask its provider for usage; True when the client had not.

    Every token is then charged from the provider's own count (tool-call arguments and reasoning
    included); counting delivered characters is left for a stream cut off before the usage came.
    """
    opts = body.get("stream_options")
    opts = opts if isinstance(opts, dict) else {}
    body["stream_options"] = {**opts, "include_usage": True}
    return not opts.get("include_usage")


def without_usage(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The chunk as a client that did not ask for usage gets it: None for a usage-only chunk."""
    if "usage" not in chunk:
        return chunk
    if not chunk.get("choices"):
        return None
    return {k: v for k, v in chunk.items() if k != "usage"}


class SettlingStream(StreamingResponse):
    """A StreamingResponse that calls `on_close()` however it ends.

    Starlette may never start the body generator (client gone before the headers went out),
    and a generator never started runs no `finally`: this is where such a stream is settled.
    """

    def __init__(self, content: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def stream_response(ctx: RequestContext, result: tuple[Any, Any], dialect: Any, strip_usage: bool,
                    idle_s: float | None, track: Callable[[asyncio.Task, str], None]) -> Response:
    """The open stream `(first chunk, iterator)` as an SSE response; from here on it settles `ctx`.

    `strip_usage`: the client did not ask for the usage chunk (the gateway did, to charge it).
    `idle_s`: the answering tier's `stream_idle_timeout_s`. `track`: keeps the close task alive
    until done (app/request/ledger.py `Ledger.track`)."""
    first, it = result
    hdrs = respond.headers(ctx, first, dialect)
    hdrs.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
    body = sse(ctx, first, it, dialect, strip_usage, idle_s)
    return SettlingStream(body, partial(_abandoned, ctx, it, body, track), media_type="text/event-stream",
                          headers=hdrs)


def _abandoned(ctx: RequestContext, it: AsyncIterator[dict] | None, body: AsyncIterator[bytes],
               track: Callable[[asyncio.Task, str], None]) -> None:
    """The response ended; if `sse` has not settled yet (client gone), make it happen now.

    A suspended `sse` is closed (its `finally` settles what it delivered, status 499); one
    that never started runs no `finally`, so the stream is settled here instead.
    """
    if ctx.settled:
        return

    async def close() -> None:
        try:
            await body.aclose()  # type: ignore[attr-defined]
        finally:
            if ctx.settle(499) and it is not None:
                await it.aclose()  # type: ignore[attr-defined]  # stop the upstream call

    track(asyncio.ensure_future(close()), ctx.id)


async def sse(ctx: RequestContext, first: dict | None, it: AsyncIterator[dict] | None, dialect: Any,
              strip_usage: bool = False, idle_s: float | None = None) -> AsyncIterator[bytes]:
    """Chunks as they come; an error after the first chunk ends the stream with an error event.

    The provider's usage is charged; with `strip_usage` the client does not see it (it did not
    ask: OpenAI sends none then). `dialect` writes each chunk, the end and a mid-stream error.
    """
    encode = dialect.chunk
    model = ctx.model or ""
    usage: dict | None = ctx.usage
    status = 200
    observe = getattr(ctx.grant, "observe", None) or (lambda chunk: None)  # accounts counts delivered tokens
    timed: AsyncIterator[dict] | None = None
    try:
        if first is not None:
            usage = first.get("usage") or usage
            observe(first)
            if not strip_usage or (first := without_usage(first)) is not None:
                yield encode(first)
        if it is not None:
            timed = stalls.chunks(it, model, idle_s)  # raises StreamStalled past `idle_s`
            async for chunk in timed:
                respond.rename_model(chunk, model)
                observe(chunk)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if strip_usage and (chunk := without_usage(chunk)) is None:
                    continue
                data = encode(chunk)
                if data:  # a translating dialect may hold a chunk back (usage, finish reason)
                    yield data
        # settle before `[DONE]`, and wait for it as a plain answer does: once the client has
        # `[DONE]` this generator may never run again, and a replica killed right after it
        # must not take the ledger row with it (the settle itself is shielded from cancellation)
        await ctx.settle_and_wait(status, usage)
        yield dialect.end()
    except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
        status = 499
        raise
    except stalls.StreamStalled as e:  # the tier went quiet: end the stream, charge what was sent
        status = stalls.STALLED_STATUS
        logger.warning("ingress: %s", e)
        yield dialect.error(e.error())
    except Exception as e:
        err = unwrap(e)
        status = err.status if isinstance(err, UpstreamError) else 502
        msg = err.message if isinstance(err, UpstreamError) else f"{type(err).__name__}: {err}"
        yield dialect.error(OpenAIError(status, f"{model} failed mid-stream: {msg}", code="upstream_stream_error"))
    finally:
        ctx.settle(status, usage)  # cut short (error, client gone): charge what was delivered; no-op once settled
        if timed is not None:
            await timed.aclose()  # type: ignore[attr-defined]
        if it is not None:
            await it.aclose()  # type: ignore[attr-defined]  # no-op when finished; cancels the upstream call otherwise
