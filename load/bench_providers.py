"""Egress cost of a translated provider (LiteLLM) vs the OpenAI pass-through, per call.

Starts the mock providers (load/mock_upstream.py, 50 ms latency by default) and one
`EgressCore` in this process, exactly as an egress replica holds it (no Ray: the numbers are
the egress's own), then drives `core.call` / `core.stream` for each model at 1 and 50
concurrent callers and prints a Markdown table: calls/s, p50/p99 and CPU ms per call
(process time / calls, i.e. what one call costs the replica's event loop).

    python -m load.bench_providers                       # mock-gpt-4 vs mock-claude vs mock-gemini
    python -m load.bench_providers --models mock-gpt-4,mock-claude --rounds 5 --stream
    python -m load.bench_providers --gateway --models mock-gpt-4,mock-claude   # through `doka run`, keys on

`--stall` asks whether one provider's calls stall another's streams on the same egress event
loop: pass-through streams (paced chunks) measure their gaps between chunks alone, then while 50
callers hammer each translated model with plain calls:

    python -m load.bench_providers --stall --models mock-claude,mock-gemini,mock-command-r

`--gateway` measures the whole request path instead (`doka run` with keys on, HTTP clients, the
same alternating rounds): req/s and p50/p99 per model, and the added p50/p99 over the mock itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MOCK_API_KEY", "mock-key")

from load.isolation import free_port  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "Say hello to the benchmark."}], "max_tokens": 16}


def _config(mock_port: int) -> Any:
    from app.config import parse_config
    from load.harness import bench_config

    return parse_config(bench_config(mock_port, free_port()))


async def _drive(core: Any, model: str, clients: int, seconds: float, stream: bool) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                if stream:
                    async for _ in core.stream("chat", model, {**BODY, "model": model}, 30):
                        pass
                else:
                    await core.call("chat", model, {**BODY, "model": model}, 30)
            except Exception:  # counted, never fatal: the table reports them
                errors += 1
            lat.append((time.perf_counter() - t) * 1000)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    return {"rps": len(lat) / wall, "p50": q(0.5), "p99": q(0.99), "cpu_ms": cpu * 1000 / max(1, len(lat)),
            "errors": errors, "n": len(lat)}


async def _bench(args: argparse.Namespace, mock_port: int) -> list[tuple[str, int, dict[str, float]]]:
    """Each (clients, model) cell `rounds` times, models alternated within a round (a shared box's
    load then hits every model alike); a cell reports its median round."""
    from deployments.egress import EgressCore

    core = EgressCore(_config(mock_port), cooldown_s=0)
    models = args.models.split(",")
    rows = []
    try:
        for model in models:  # warm up: connections, LiteLLM's lazy imports
            await _drive(core, model, 4, 1.0, args.stream)
        for clients in args.clients:
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in models}
            for _ in range(args.rounds):
                for model in models:
                    runs[model].append(await _drive(core, model, clients, args.seconds, args.stream))
            for model in models:
                ordered = sorted(runs[model], key=lambda r: r["rps"])
                median = ordered[len(ordered) // 2]
                median["errors"] = sum(r["errors"] for r in ordered)
                rows.append((model, clients, median))
    finally:
        await core.close()
    return rows


STALL_CHUNKS, STALL_INTERVAL_MS = 40, 25.0  # the victims' paced streams: one second each


async def _victims(core: Any, model: str, n: int, seconds: float) -> list[float]:
    """`n` streams of `model` back to back for `seconds`: each gap between chunks, in ms, beyond the pacing."""
    gaps: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        while time.perf_counter() < deadline:
            last = None
            async for _ in core.stream("chat", model, {**BODY, "model": model}, 30):
                now = time.perf_counter()
                if last is not None:
                    gaps.append(max(0.0, (now - last) * 1000 - STALL_INTERVAL_MS))
                last = now

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(gaps)


async def _stall(args: argparse.Namespace, mock_port: int) -> list[tuple[str, dict[str, float]]]:
    from deployments.egress import EgressCore

    core = EgressCore(_config(mock_port), cooldown_s=0)
    victim, noisy = "mock-gpt-4", args.models.split(",")
    rows = []
    try:
        for model in [victim, *noisy]:  # warm up: connections, LiteLLM's lazy imports
            await _drive(core, model, 4, 1.0, False)
        for load_model in [None, *noisy]:
            gaps_task = asyncio.ensure_future(_victims(core, victim, 4, args.seconds))
            noise = (_drive(core, load_model, 50, args.seconds, False) if load_model else asyncio.sleep(0))
            noise_result, gaps = await asyncio.gather(noise, gaps_task)
            q = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))] if gaps else float("nan")  # noqa: E731
            rows.append((load_model or "(none)", {"p50": q(0.5), "p99": q(0.99), "max": gaps[-1] if gaps else float("nan"),
                                                  "n": len(gaps), "noise_rps": noise_result["rps"] if load_model else 0.0,
                                                  "noise_errors": noise_result["errors"] if load_model else 0}))
    finally:
        await core.close()
    return rows


def _gateway_bench(args: argparse.Namespace) -> int:
    """The same comparison through the whole gateway (load/bench_gateway.py's `doka run` + load)."""
    from load.harness import BODY as GW_BODY
    from load.harness import Gateway, load, start_mock

    models = args.models.split(",")
    mock, mock_port = start_mock(args.latency_ms)
    gw = Gateway(mock_port, keys=True, learned=False, tag="providers",
                 deployments={"egress": {"num_replicas": args.egress_replicas}})
    rows: list[tuple[int, str, dict[str, float]]] = []
    try:
        gw.ready()
        url = f"{gw.url}/v1/chat/completions"
        for m in models:
            load("python", url, {**GW_BODY, "model": m}, 8, 3, gw.headers)
        for n in args.clients:
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in ["mock upstream", *models]}
            for _ in range(args.rounds):
                runs["mock upstream"].append(load("python", f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                                                  {**GW_BODY, "model": "gpt-4-turbo"}, n, int(args.seconds)))
                for m in models:
                    runs[m].append(load("python", url, {**GW_BODY, "model": m}, n, int(args.seconds), gw.headers))
            for name, rs in runs.items():
                ordered = sorted(rs, key=lambda r: r["rps"])
                rows.append((n, name, {**ordered[len(ordered) // 2], "non2xx": sum(r["non2xx"] for r in rs)}))
    finally:
        gw.stop()
        mock.terminate()
        mock.wait(30)
    print(f"\ngateway (keys on, {args.egress_replicas} egress replica(s)), mock latency {args.latency_ms:g} ms, median of {args.rounds} alternating rounds "
          f"of {int(args.seconds)} s, load average {os.getloadavg()[0]:.1f}\n")
    print("| clients | target | req/s | vs first model | p50 ms | p99 ms | added p50 ms | added p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, name, r in rows:
        direct = next(x for c, nm, x in rows if c == n and nm == "mock upstream")
        first = next(x for c, nm, x in rows if c == n and nm == models[0])
        added = ("", "") if name == "mock upstream" else (f"{r['p50'] - direct['p50']:.1f}", f"{r['p99'] - direct['p99']:.1f}")
        rel = "" if name == "mock upstream" else f"{r['rps'] / first['rps']:.0%}"
        print(f"| {n} | {name} | {r['rps']:.1f} | {rel} | {r['p50']:.1f} | {r['p99']:.1f} | {added[0]} | {added[1]} | "
              f"{r['non2xx']} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load.bench_providers", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mock-gpt-4,mock-claude,mock-gemini")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 50])
    p.add_argument("--seconds", type=float, default=5.0, help="per round and cell")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell; the median is reported")
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--stream", action="store_true", help="streamed calls (chunks consumed one by one)")
    p.add_argument("--gateway", action="store_true", help="through `doka run` (keys on) instead of one EgressCore")
    p.add_argument("--egress-replicas", type=int, default=1, help="with --gateway: egress replicas")
    p.add_argument("--stall", action="store_true", help="gaps in pass-through streams while other providers are loaded")
    args = p.parse_args(argv)
    if args.gateway:
        return _gateway_bench(args)
    port = free_port()
    pacing = ["--chunks", str(STALL_CHUNKS), "--chunk-interval-ms", str(STALL_INTERVAL_MS)] if args.stall else []
    mock = subprocess.Popen([sys.executable, "-m", "load.mock_upstream", "--port", str(port),
                             "--latency-ms", str(args.latency_ms), *pacing],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        if args.stall:
            stall_rows = asyncio.run(_stall(args, port))
        else:
            rows = asyncio.run(_bench(args, port))
    finally:
        mock.terminate()
        mock.wait(10)
    if args.stall:
        print(f"\n4 pass-through streams of mock-gpt-4 ({STALL_CHUNKS} chunks every {STALL_INTERVAL_MS:g} ms) on one "
              f"EgressCore, alone and beside 50 plain callers of each model, {args.seconds:g} s each, "
              f"load average {os.getloadavg()[0]:.1f}; gap = time between chunks beyond the pacing\n")
        print("| load beside the streams | its calls/s | its errors | gaps | gap p50 ms | gap p99 ms | gap max ms |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, r in stall_rows:
            print(f"| {name} | {r['noise_rps']:.0f} | {r['noise_errors']} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | "
                  f"{r['max']:.1f} |")
        return 0
    base = {c: r for m, c, r in rows if m == rows[0][0]}
    kind = "stream" if args.stream else "plain"
    print(f"\n{kind} calls, mock latency {args.latency_ms:g} ms, median of {args.rounds} alternating rounds of "
          f"{args.seconds:g} s, load average {os.getloadavg()[0]:.1f}\n")
    print("| model | clients | calls/s | vs first | p50 ms | p99 ms | CPU ms/call | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, clients, r in rows:
        rel = r["rps"] / base[clients]["rps"] if base[clients]["rps"] else 0
        print(f"| {model} | {clients} | {r['rps']:.0f} | {rel:.0%} | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{r['cpu_ms']:.2f} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
