"""The hot path's transport: authorize/settle batches over one TCP connection per ingress replica.

Why not a Ray actor call: one costs several hundred us of CPU in the caller and as much again in
the accounts actor, whatever it carries (`python -m load.bench_accounts_transport`;
docs/benchmarks.md), and each request needs two. On a saturated gateway that was most of what
keys cost. A msgpack frame on a persistent connection costs tens of us on each side. Only
`AccountsCore.batch` travels here; the admin API, heartbeats and flushes stay Ray actor calls.

Safety: the server listens on the node's IP inside the accounts actor; a client must first send
the random token it got from that actor through a Ray call (so only what can already call the
actor can connect); frames are msgpack (data, never pickle) and capped in size. A batch is
numbered per client: resent after a lost connection to the same core (over this socket or as a
Ray call), it is answered from the core's memory instead of being applied twice.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

log = logging.getLogger("doka.accounts")
MAX_FRAME = 64 * 1024 * 1024
MAX_HELLO = 1024  # before the token checks out, nothing bigger is read
HELLO_TIMEOUT_S = 10.0  # nor is a silent connection kept
_LEN = 4

Handler = Callable[[list[Any], str, int], Awaitable[list[Any]]]  # (ops, client, seq) -> results


class WireClosed(ConnectionError):
    """The connection to the accounts core is gone (the core died, moved, or refused the token)."""


def encode(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(_LEN, "big") + body


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> Any:
    n = int.from_bytes(await reader.readexactly(_LEN), "big")
    if n > limit:
        raise ValueError(f"frame of {n} bytes is over the {limit} byte limit")
    return msgpack.unpackb(await reader.readexactly(n), raw=False)


class WireServer:
    """Answers `[client, seq, ops]` frames with `handler(ops, client, seq)`, for authenticated clients."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.host = host
        self.token = secrets.token_hex(32)
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self.batches = 0

    async def start(self) -> dict[str, Any]:
        """Listen (once) and return where and how to connect."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return {"host": self.host, "port": self.port, "token": self.token}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = await asyncio.wait_for(read_frame(reader, MAX_HELLO), HELLO_TIMEOUT_S)
            if not isinstance(hello, str) or not hmac.compare_digest(hello, self.token):
                log.warning("accounts wire: refused a connection from %s (bad token)",
                            writer.get_extra_info("peername"))
                return
            writer.write(encode("ok"))
            while True:
                client, seq, ops = await read_frame(reader)
                self.batches += 1
                try:
                    results = await self.handler(ops, client, seq)
                except Exception as e:  # a bug, not a refusal: the caller answers 503
                    log.exception("accounts wire: batch failed")
                    writer.write(encode({"wire_error": f"{type(e).__name__}: {e}"}))
                    continue
                writer.write(encode({"results": results}))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass  # the client went away, or never said who it is
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            log.warning("accounts wire: dropped a connection sending a malformed frame: %r", e)
        finally:
            writer.close()


class WireClient:
    """One connection to a core's WireServer, opened on first use; one batch in flight at a time."""

    def __init__(self, address: dict[str, Any]) -> None:
        self.address = address
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_connection(self.address["host"], self.address["port"])
            writer.write(encode(self.address["token"]))
            if await read_frame(reader) != "ok":
                raise WireClosed("the accounts core refused the connection")
        except (OSError, asyncio.IncompleteReadError) as e:
            raise WireClosed(f"cannot reach the accounts core at {self.address['host']}:"
                             f"{self.address['port']}: {e!r}") from e
        return reader, writer

    async def batch(self, client: str, seq: int, ops: list[Any]) -> list[Any]:
        """`AccountsCore.batch(ops, client, seq)` over the socket; WireClosed when it is gone."""
        async with self._lock:
            try:
                if self._conn is None:
                    self._conn = await self._connect()
                reader, writer = self._conn
                writer.write(encode([client, seq, ops]))
                await writer.drain()
                answer = await read_frame(reader)
            except (OSError, asyncio.IncompleteReadError) as e:
                self.close()
                raise WireClosed(f"lost the connection to the accounts core: {e!r}") from e
        if "wire_error" in answer:
            raise RuntimeError(f"accounts core failed the batch: {answer['wire_error']}")
        return answer["results"]

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None
