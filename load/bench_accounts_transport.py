"""What one round trip to the accounts core costs: Ray actor call vs its socket (accounts.wire).

`python -m load.bench_accounts_transport` starts a local Ray, the real AccountsCore as an actor
(SQLite in a temp dir, one key far from its limits) and a caller actor in the ingress's place,
then sends the same authorize + settle batches both ways, one in flight at a time as the
ingress's Coalescer does. It reports CPU time per round trip in the caller and in the core
(process time: every thread, Ray's included) and wall time. This is why the hot path does not
use Ray calls: their cost is per call, whatever the batch carries.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

from accounts.core import AccountsCore


class TimedCore(AccountsCore):
    async def cpu(self) -> float:
        return time.process_time()


class Caller:
    """Stands where an ingress replica stands: an async actor holding the core's handle."""

    def __init__(self, core: Any) -> None:
        self.core = core

    async def run(self, transport: str, batches: int, pairs: int, key: str) -> dict[str, float]:
        from accounts.wire import WireClient

        wire = WireClient((await self.core.serve_wire.remote())["ok"]) if transport == "socket" else None
        seq = 0

        async def send(ops: list[Any]) -> list[Any]:
            nonlocal seq
            seq += 1
            if wire is not None:
                return await wire.batch("bench", seq, ops)
            return await self.core.batch.remote(ops, "bench", seq)

        async def one_batch(i: int) -> None:
            auth = [["authorize", [key, "mock-gpt-3.5", 64, f"r{i}-{j}", "bench"], {}] for j in range(pairs)]
            granted = await send(auth)
            await send([["settle", [g["ok"]["reservation_id"], g["ok"]["key_id"]],
                         {"model_requested": "mock-gpt-3.5", "model": "mock-gpt-3.5", "prompt_tokens": 20,
                          "completion_tokens": 8, "request_id": f"r{i}-{j}"}] for j, g in enumerate(granted)])

        for i in range(20):  # warm-up: connection, caches
            await one_batch(-i - 1)
        c0, t0, w0 = await self.core.cpu.remote(), time.process_time(), time.perf_counter()
        for i in range(batches // 2):
            await one_batch(i)
        c1, t1, w1 = await self.core.cpu.remote(), time.process_time(), time.perf_counter()
        n = 2 * (batches // 2)
        return {"caller_us": 1e6 * (t1 - t0) / n, "core_us": 1e6 * (c1 - c0) / n, "wall_us": 1e6 * (w1 - w0) / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.bench_accounts_transport", description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2000, help="round trips per point")
    ap.add_argument("--pairs", default="1,8", help="comma-separated authorize+settle pairs per batch")
    args = ap.parse_args(argv)

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = f"sqlite:///{tempfile.mkdtemp(prefix='doka-transport-')}/acct.db"
        core = ray.remote(TimedCore).options(num_cpus=0, max_concurrency=1000).remote(
            url, prices={"mock-gpt-3.5": (1e-6, 2e-6)}, settle_interval_s=1.0)
        key = ray.get(core.generate_key.remote({"tokens_per_day": 10**12, "rpm_limit": 10**9}))["ok"]["key"]
        caller = ray.remote(Caller).options(num_cpus=0).remote(core)
        print("| transport | ops per batch | caller CPU us/round trip | core CPU us/round trip | wall us/round trip |")
        print("| --- | --- | --- | --- | --- |")
        for pairs in (int(p) for p in args.pairs.split(",")):
            for transport in ("ray", "socket"):
                r = ray.get(caller.run.remote(transport, args.batches, pairs, key))
                print(f"| {transport} | {pairs} | {r['caller_us']:.0f} | {r['core_us']:.0f} | {r['wall_us']:.0f} |",
                      flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
