"""What the ledger's write-ahead spool (accounts.spool) costs the accounts core per settlement.

The same in-process AccountsCore (SQLite under a temp dir), spool off vs on, settles N requests in
batches of B (the ingress's group commit sends batches: one fsync per batch). Reports core CPU
and wall time per settlement; the fsync is the whole difference.

    python -m load.bench_ledger_spool [--requests 20000] [--batch 16]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from accounts.core import AccountsCore


async def run(spool: bool, n: int, batch: int, root: Path) -> tuple[float, float]:
    d = root / ("on" if spool else "off")
    d.mkdir()
    core = AccountsCore(f"sqlite:///{d / 'db.sqlite'}", prices={"m": (1e-6, 2e-6)}, settle_interval_s=0.5,
                        spool_dir=str(d / "spool") if spool else None)
    key = (await core.generate_key({}))["ok"]["key"]
    await core.authorize(key, "m", 10)  # key loaded, meter built
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, n, batch):
        ops = [("authorize", (key, "m", 30, f"r{j}", None), {}) for j in range(i, i + batch)]
        grants = await core.batch(ops)
        await core.batch([("settle", (g["ok"]["reservation_id"], g["ok"]["key_id"]),
                           {"model_requested": "m", "model": "m", "prompt_tokens": 10, "completion_tokens": 20,
                            "request_id": f"r{i}"}) for g in grants])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await core.close()
    return 1e6 * wall / n, 1e6 * cpu / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    rows: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, spool in enumerate((False, True, False, True)):  # interleaved: the box is shared
            root = Path(tmp) / str(i)
            root.mkdir()
            rows[spool].append(asyncio.run(run(spool, args.requests, args.batch, root)))
    print(f"\n{args.requests} authorize+settle pairs, batches of {args.batch} (one fsync per settle batch)\n")
    print("| spool | wall us/request (runs) | CPU us/request (runs) |")
    print("| --- | --- | --- |")
    for spool, res in rows.items():
        print(f"| {'on' if spool else 'off'} | {', '.join(f'{w:.1f}' for w, _ in res)} | "
              f"{', '.join(f'{c:.1f}' for _, c in res)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
