"""Gateway overhead bench: the mock upstream directly vs the same upstream through doka.

Starts a mock upstream (default 50 ms latency) and `doka run` on free loopback ports, then
drives both with wrk (or a bounded asyncio load generator when wrk is missing) at each client
count, and prints a Markdown table: requests/s, p50, p99 and the gateway's added p50.
Only 127.0.0.1 is ever targeted; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BODY = {"model": "{model}", "messages": [{"role": "user", "content": "Say hello to the benchmark."}], "max_tokens": 16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_config(mock_port: int, server_port: int) -> dict[str, Any]:
    """config/default.yaml with no vLLM model, keys off, pointed at the bench's ports."""
    raw = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    vllm = {m["model_name"] for m in raw["model_list"] if m.get("provider") == "vllm"}
    raw["model_list"] = [m for m in raw["model_list"] if m["model_name"] not in vllm]
    for m in raw["model_list"]:
        if "api_base" in m.get("litellm_params", {}):
            m["litellm_params"]["api_base"] = f"http://127.0.0.1:{mock_port}/v1"
    raw["fallbacks"] = {k: [x for x in v if x not in vllm] for k, v in raw.get("fallbacks", {}).items()}
    raw["server"]["port"] = server_port
    raw["accounts"] = {"require_keys": False, "master_key": None}
    raw["router"].update(strategy="weighted_round_robin", registry=None)
    return raw


def _wait_http(url: str, timeout: float) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up within {timeout:g}s")


# ---------------------------------------------------------------- load generators
_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, body: dict[str, Any], clients: int, duration: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_LUA.format(body=json.dumps(body)))
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{duration}s", "--timeout", "10s", "--latency",
             "-s", script, url], capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    finally:
        os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"\s(50|99)%\s+([\d.]+)(us|ms|s|m)\b", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else ""}


async def _py_load(url: str, body: dict[str, Any], clients: int, duration: int) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            async with session.post(url, json=body) as resp:
                await resp.read()
                if resp.status != 200:
                    failures += 1
            latencies.append((time.perf_counter() - t) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"rps": len(latencies) / elapsed, "p50": pick(0.5), "p99": pick(0.99), "non2xx": failures,
            "socket_errors": ""}


def load(tool: str, url: str, body: dict[str, Any], clients: int, duration: int) -> dict[str, float]:
    if tool == "wrk":
        return run_wrk(url, body, clients, duration)
    return asyncio.run(_py_load(url, body, clients, duration))


# ---------------------------------------------------------------- the bench
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", default="1,50", help="comma-separated concurrent client counts")
    p.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    p.add_argument("--latency-ms", type=float, default=50.0, help="mock upstream latency")
    p.add_argument("--model", default="mock-gpt-3.5", help="doka model name to call")
    p.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--no-perf", action="store_true", help="run Serve without its throughput/HAProxy mode")
    p.add_argument("--gateway-url", help="bench this running gateway instead of starting one")
    p.add_argument("--skip-direct", action="store_true", help="skip measuring the mock upstream directly")


def run_bench(args: argparse.Namespace) -> int:
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "python")
    clients = [int(c) for c in args.clients.split(",")]
    procs: list[subprocess.Popen] = []
    tmp = None
    try:
        mock_port = _free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "load.mock_upstream", "--port", str(mock_port),
                                       "--latency-ms", str(args.latency_ms)], cwd=REPO))
        _wait_http(f"http://127.0.0.1:{mock_port}/health", 30)
        gateway = args.gateway_url
        if not gateway:
            port = _free_port()
            tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            yaml.safe_dump(bench_config(mock_port, port), tmp)
            tmp.close()
            env = {**os.environ, "MOCK_API_KEY": os.environ.get("MOCK_API_KEY", "mock-key")}
            cmd = [sys.executable, "-m", "app.cli", "run", "--config", tmp.name, "--no-mock"]
            if args.no_perf:
                cmd.append("--no-perf")
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            gateway = f"http://127.0.0.1:{port}"
            _wait_http(f"{gateway}/health/liveliness", 180)
        direct_body = {**BODY, "model": "gpt-3.5-turbo"}
        gw_body = {**BODY, "model": args.model}
        load(tool, f"{gateway}/v1/chat/completions", gw_body, 8, 3)  # warm-up: connections, JIT caches
        rows = []
        for n in clients:
            direct = None if args.skip_direct else load(tool, f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                                                        direct_body, n, args.duration)
            gw = load(tool, f"{gateway}/v1/chat/completions", gw_body, n, args.duration)
            rows.append((n, direct, gw))
        la = os.getloadavg()
        print(f"\nbench: tool={tool}, {args.duration}s per point, upstream latency {args.latency_ms:g} ms, "
              f"perf env {'off' if args.no_perf else 'on'}, load average after run {la[0]:.2f}\n")
        print("| clients | target | req/s | p50 ms | p99 ms | added p50 ms | errors |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for n, direct, gw in rows:
            if direct:
                print(f"| {n} | mock upstream | {direct['rps']:.1f} | {direct['p50']:.1f} | {direct['p99']:.1f} | | {direct['non2xx']} |")
            added = f"{gw['p50'] - direct['p50']:.1f}" if direct else ""
            print(f"| {n} | doka gateway | {gw['rps']:.1f} | {gw['p50']:.1f} | {gw['p99']:.1f} | {added} | {gw['non2xx']} |")
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        if tmp is not None:
            os.unlink(tmp.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doka bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
