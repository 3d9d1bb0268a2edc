"""Gateway overhead bench: the mock upstream directly vs the same upstream through doka.

Starts a mock upstream (default 50 ms latency) and `doka run` on free loopback ports, then
drives both with wrk (or a bounded asyncio load generator when wrk is missing) at each client
count, and prints a Markdown table: requests/s, p50, p99 and the gateway's added p50.
By default the gateway runs as in production: keys required (each request carries a virtual
key with quotas, so it pays key check + reservation + settle + a ledger row) and `auto`
answered by the learned router from `doka router bootstrap`; `--keys off` measures without, and
`--keys both` runs the two side by side (load/bench_keys.py).
Only 127.0.0.1 is ever targeted; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import shutil

from load.harness import BODY, Gateway, load, start_mock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", default="1,50", help="comma-separated concurrent client counts")
    p.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    p.add_argument("--latency-ms", type=float, default=50.0, help="mock upstream latency")
    p.add_argument("--models", default="mock-gpt-3.5,auto", help="comma-separated doka model names to call")
    p.add_argument("--mock-answer", action="append", default=[], metavar="UPSTREAM_MODEL=TEXT",
                   help="a fixed answer for one upstream model (repeatable): makes a cascade's models agree")
    p.add_argument("--keys", choices=["on", "off", "both"], default="on",
                   help="on: every request carries a virtual key (auth + quota + ledger row); both: a "
                   "keys-off and a keys-on gateway side by side, alternated (load/bench_keys.py)")
    p.add_argument("--rounds", type=int, default=5, help="with --keys both: off/on pairs to alternate")
    p.add_argument("--router", choices=["learned", "static"], default="learned",
                   help="what answers `auto` (learned needs `doka router bootstrap`)")
    p.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-perf", action="store_true", help="run Serve without its throughput/HAProxy mode")
    p.add_argument("--skip-direct", action="store_true", help="skip measuring the mock upstream directly")
    p.add_argument("--memory", action="store_true",
                   help="instead: idle RSS/PSS/USS per process of a gateway node, by role (load/bench_memory.py)")
    p.add_argument("--no-dashboard", action="store_true", help="with --memory: `doka run --no-dashboard`")
    p.add_argument("--compare", action="store_true",
                   help="instead: mock vs doka vs LiteLLM proxy at 1/10/50 clients (load/compare.py)")


def run_bench(args: argparse.Namespace) -> int:
    if args.memory:
        from load.bench_memory import main as memory_main

        argv = ["--keys", "on" if args.keys == "both" else args.keys, "--router", args.router, "--processes"]
        return memory_main(argv + (["--no-perf"] if args.no_perf else []) + (["--no-dashboard"] if args.no_dashboard else []))
    if args.compare:
        from load.compare import main as compare_main

        argv = ["--duration", str(args.duration), "--latency-ms", str(args.latency_ms), "--tool", args.tool]
        if args.clients != "1,50":
            argv += ["--clients", args.clients]
        return compare_main(argv)
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "python")
    if args.keys == "both":
        from load.bench_keys import run_keys_ab

        return run_keys_ab(args, tool)
    clients = [int(c) for c in args.clients.split(",")]
    models = [m for m in args.models.split(",") if m]
    mock = gw = None
    la_before = os.getloadavg()
    try:
        mock, mock_port = start_mock(args.latency_ms)
        if args.mock_answer:
            import httpx

            answers = dict(a.split("=", 1) for a in args.mock_answer)
            httpx.post(f"http://127.0.0.1:{mock_port}/_mock/state", json={"answers": answers}, timeout=10).raise_for_status()
        gw = Gateway(mock_port, keys=args.keys == "on", learned=args.router == "learned", perf=not args.no_perf)
        gw.ready()
        url = f"{gw.url}/v1/chat/completions"
        for m in models:  # warm-up: connections, JIT caches, the router's first batches
            load(tool, url, {**BODY, "model": m}, 8, 3, gw.headers)
        rows = []
        for n in clients:
            direct = None if args.skip_direct else load(tool, f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                                                        {**BODY, "model": "gpt-3.5-turbo"}, n, args.duration)
            rows.append((n, "mock upstream", direct, None))
            for m in models:
                rows.append((n, f"doka {m}", load(tool, url, {**BODY, "model": m}, n, args.duration, gw.headers), direct))
                r = rows[-1][2]
                print(f"  {n:>3} clients  doka {m:<14} {r['rps']:8.1f} req/s  p50 {r['p50']:7.1f} ms  "
                      f"p99 {r['p99']:7.1f} ms  errors {r['non2xx']}", flush=True)
    finally:
        if gw is not None:
            gw.stop()
        if mock is not None:
            mock.terminate()
            mock.wait(30)
    la = os.getloadavg()
    print(f"\nbench: tool={tool}, {args.duration}s per point, upstream latency {args.latency_ms:g} ms, "
          f"keys {args.keys}, auto router {args.router}, perf env {'off' if args.no_perf else 'on'}, "
          f"load average before/after {la_before[0]:.2f}/{la[0]:.2f}\n")
    print("| clients | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, name, r, direct in rows:
        if r is None:
            continue
        added = (f"{r['p50'] - direct['p50']:.1f}", f"{r['p99'] - direct['p99']:.1f}") if direct else ("", "")
        print(f"| {n} | {name} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {added[0]} | {added[1]} | "
              f"{r['non2xx']} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doka bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
