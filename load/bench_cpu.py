"""Where a request's CPU goes: CPU milliseconds per request in each process of the gateway node.

`python -m load.bench_cpu` starts the mock upstream and `doka run` (as load/bench_gateway.py:
keys on, learned router, Serve's throughput/HAProxy mode), then for each model in turn drives
`--clients` closed-loop clients for `--duration` seconds and reads the CPU time (user + system)
every process of the gateway's session spent, grouped by role (load/bench_memory.py's roles),
divided by the requests answered. Models alternate for `--rounds` rounds so a busy box hits
them alike. The mock's and this load generator's own CPU are shown too: they share the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

from load.harness import BODY, REGISTRY, Gateway, py_load, start_mock
from load.bench_memory import process_title, role_of, session_processes


def cpu_by_role(procs: list) -> collections.Counter:
    import psutil

    out: collections.Counter = collections.Counter()
    for p in procs:
        try:
            t = p.cpu_times()
            out[role_of(process_title(p))] += t.user + t.system
        except psutil.Error:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    import psutil

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mock-gpt-3.5,auto", help="comma-separated doka model names")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--min-ms", type=float, default=0.1, help="hide roles below this many ms per request")
    args = ap.parse_args(argv)

    mock, mock_port = start_mock(50.0)
    mock_proc = psutil.Process(mock.pid)
    gw = Gateway(mock_port, keys=True, learned=(REGISTRY / "latest").exists(), tag="cpu")
    try:
        gw.ready()
        procs = session_processes(gw.proc.pid, gw.env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
        url = f"{gw.url}/v1/chat/completions"
        print(f"{args.clients} clients, {args.duration} s per point, keys on; CPU ms per request\n")
        for rnd in range(args.rounds):
            for model in args.models.split(","):
                body = {**BODY, "model": model}
                asyncio.run(py_load(url, body, args.clients, 2, gw.headers))  # warm
                before, mock0, me0 = cpu_by_role(procs), sum(mock_proc.cpu_times()[:2]), time.process_time()
                r = asyncio.run(py_load(url, body, args.clients, args.duration, gw.headers))
                after, mock1, me1 = cpu_by_role(procs), sum(mock_proc.cpu_times()[:2]), time.process_time()
                n = max(r["rps"] * args.duration, 1)
                rows = sorted(((k, (after[k] - before[k]) / n * 1000) for k in after), key=lambda kv: -kv[1])
                total = sum(v for _, v in rows)
                print(f"round {rnd + 1}, {model}: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                      f"errors {r['non2xx']}; gateway {total:.2f} ms CPU per request")
                for role, ms in rows:
                    if ms >= args.min_ms:
                        print(f"    {ms:6.2f}  {role}")
                print(f"    {(mock1 - mock0) / n * 1000:6.2f}  (mock upstream)\n    {(me1 - me0) / n * 1000:6.2f}  (load generator)\n")
    finally:
        gw.stop()
        mock.terminate()
        mock.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
