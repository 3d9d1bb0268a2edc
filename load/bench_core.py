"""Microseconds per request through the Ray-free gateway core (app/request/), in one process.

The whole path without Ray or HTTP sockets: a Starlette request, body read and validated, plan,
a fake tier's answer (tests/request_core_support.py), observability on, keys off, the response.
`python -m load.bench_core [--requests N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path


async def measure(n: int) -> float:
    from app.schemas import ChatCompletionRequest
    from tests.request_core_support import CHAT, Gateway, core_config, http_request

    gw = Gateway(core_config(Path(tempfile.mkdtemp(prefix="doka-bench-core-")), keyed=False))
    body = {"model": "mock-gpt-4", **CHAT}
    for _ in range(200):  # warm-up
        await gw.core.serve(http_request(dict(body)), "chat", ChatCompletionRequest)
    started = time.perf_counter()
    for _ in range(n):
        await gw.core.serve(http_request(dict(body)), "chat", ChatCompletionRequest)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=3000)
    args = p.parse_args()
    print(f"{asyncio.run(measure(args.requests)):.0f} us per request through GatewayCore.serve "
          "(fake tier, keys off, observability on)")


if __name__ == "__main__":
    main()
