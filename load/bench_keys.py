"""Keys on vs off, side by side: `doka bench --keys both` (the accounts issue's throughput target).

Two gateways run at once on the same mock upstream, one with keys off and one with a virtual key
on every request (quotas, budget and rate limits all far from exhausted, so each request pays
key check + reservation + settle + ledger row). They are driven in turn, alternating which goes
first each round, so both see the same machine: on a 2-core box single runs of one gateway
spread by +-20% between start-ups, far more than the effect measured. Besides requests/s it
reports the machine's CPU time per request (from /proc/stat, the load generator included),
which moves much less than throughput from run to run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from load.harness import BODY, Gateway, load, start_mock


def busy_seconds() -> float:
    """CPU seconds spent by the whole machine so far (all cores, all processes)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_keys_ab(args: argparse.Namespace, tool: str) -> int:
    clients = int(args.clients.split(",")[-1])
    model = args.models.split(",")[0]
    body = {**BODY, "model": model}
    mock = None
    gateways: dict[str, Gateway] = {}
    rows: list[tuple[int, str, dict[str, float]]] = []
    la_before = os.getloadavg()
    try:
        mock, mock_port = start_mock(args.latency_ms)
        for mode in ("off", "on"):  # one after the other: two Ray start-ups at once can time out here
            gw = Gateway(mock_port, keys=mode == "on", learned=args.router == "learned", perf=not args.no_perf,
                         tag=f"keys-{mode}")
            gw.ready()
            gateways[mode] = gw
        for gw in gateways.values():
            load(tool, f"{gw.url}/v1/chat/completions", body, 8, 3, gw.headers)  # warm-up
        for r in range(args.rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                gw = gateways[mode]
                cpu0 = busy_seconds()
                res = load(tool, f"{gw.url}/v1/chat/completions", body, clients, args.duration, gw.headers)
                res["cpu_ms"] = 1000 * (busy_seconds() - cpu0) / max(1.0, res["rps"] * args.duration)
                rows.append((r + 1, mode, res))
                print(f"  round {r + 1}  keys {mode:<3} {res['rps']:8.1f} req/s  p50 {res['p50']:7.1f} ms  "
                      f"p99 {res['p99']:7.1f} ms  cpu {res['cpu_ms']:.2f} ms/req  errors {res['non2xx']}", flush=True)
                time.sleep(1)
    finally:
        for gw in gateways.values():
            gw.stop()
        if mock is not None:
            mock.terminate()
            mock.wait(30)
    la = os.getloadavg()
    by = {m: [res for _, mode, res in rows if mode == m] for m in ("off", "on")}
    mean = {m: statistics.mean(x["rps"] for x in by[m]) for m in by}
    cpu = {m: statistics.mean(x["cpu_ms"] for x in by[m]) for m in by}
    pair_loss = [100 * (1 - on["rps"] / off["rps"]) for off, on in zip(by["off"], by["on"])]
    print(f"\nbench: keys off vs on side by side, tool={tool}, {clients} clients, {args.duration}s per point, "
          f"{args.rounds} rounds, model {model}, upstream latency {args.latency_ms:g} ms, "
          f"load average before/after {la_before[0]:.2f}/{la[0]:.2f}\n")
    print("| keys | runs (req/s) | mean req/s | p50 ms | p99 ms | CPU ms/request | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m in ("off", "on"):
        runs = ", ".join(f"{x['rps']:.1f}" for x in by[m])
        p50 = f"{min(x['p50'] for x in by[m]):.0f}-{max(x['p50'] for x in by[m]):.0f}"
        p99 = f"{min(x['p99'] for x in by[m]):.0f}-{max(x['p99'] for x in by[m]):.0f}"
        print(f"| {m} | {runs} | {mean[m]:.1f} | {p50} | {p99} | {cpu[m]:.2f} | {sum(x['non2xx'] for x in by[m])} |")
    print(f"\nthroughput loss with keys on: {100 * (1 - mean['on'] / mean['off']):.1f}% of the means "
          f"(per round: {', '.join(f'{x:.1f}' for x in pair_loss)}; median {statistics.median(pair_loss):.1f}%); "
          f"CPU per request +{100 * (cpu['on'] / cpu['off'] - 1):.1f}%")
    return 0


if __name__ == "__main__":  # `python -m load.bench_keys` = `doka bench --keys both`
    from load.bench_gateway import main

    raise SystemExit(main(["--keys", "both", *sys.argv[1:]]))

