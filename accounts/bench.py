"""Throughput with auth + quota on vs off, through the real Serve app (`python -m accounts.bench`).

Starts a mock upstream and a local Ray/Serve, then alternates the same doka app with keys off
and with keys on (a key with quotas, budget and rate limits all far from exhausted, so every
request pays the full check + reservation + settle), driving each with N concurrent clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from load.isolation import free_port

REPO = Path(__file__).resolve().parent.parent
MASTER = "sk-master-bench"
BODY = {"model": "mock-gpt-3.5", "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": 16}


def _config(mock_port: int, data_dir: str, keys: bool) -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    vllm = {m["model_name"] for m in raw["model_list"] if m.get("provider") == "vllm"}
    raw["model_list"] = [m for m in raw["model_list"] if m["model_name"] not in vllm]
    for m in raw["model_list"]:
        if "api_base" in m.get("litellm_params", {}):
            m["litellm_params"]["api_base"] = f"http://127.0.0.1:{mock_port}/v1"
    raw["fallbacks"] = {k: [x for x in v if x not in vllm] for k, v in raw.get("fallbacks", {}).items()}
    raw["fallbacks"] = {k: v for k, v in raw["fallbacks"].items() if v}
    raw["router"].update(strategy="weighted_round_robin", registry=None)
    raw["server"]["data_dir"] = data_dir
    raw["accounts"] = {"require_keys": keys, "master_key": MASTER if keys else None}
    return raw


async def _load(url: str, headers: dict[str, str], clients: int, duration: float) -> dict[str, float]:
    import aiohttp

    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(session) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            async with session.post(url, json=BODY, headers=headers) as r:
                await r.read()
                errors += r.status != 200
            lat.append((time.perf_counter() - t) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    return {"rps": len(lat) / elapsed, "p50": q(0.5), "p99": q(0.99), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accounts.bench", description=__doc__)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternated to spread machine noise")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="mock upstream latency")
    args = ap.parse_args(argv)

    import httpx
    import ray
    from ray import serve

    from app.config import parse_config
    from app.graph import build_app

    os.environ.setdefault("MOCK_API_KEY", "mock-key")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    mock_port, port = free_port(), free_port()
    mock = subprocess.Popen([sys.executable, "-m", "load.mock_upstream", "--port", str(mock_port),
                             "--latency-ms", str(args.latency_ms)], cwd=REPO, stdout=subprocess.DEVNULL)
    data_dir = tempfile.mkdtemp(prefix="doka-bench-")
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                cfg = parse_config(_config(mock_port, data_dir, keys=mode == "on"))
                serve.run(build_app(cfg), name="doka", route_prefix="/")
                headers = {}
                if mode == "on":
                    key = httpx.post(f"{url}/key/generate", headers={"Authorization": f"Bearer {MASTER}"},
                                     json={"tokens_per_day": 10**12, "tokens_per_month": 10**12, "max_budget": 10**6,
                                           "budget_period": "month", "rpm_limit": 10**7, "tpm_limit": 10**12},
                                     timeout=60).json()["key"]
                    headers = {"Authorization": f"Bearer {key}"}
                asyncio.run(_load(f"{url}/v1/chat/completions", headers, 8, 3))  # warm-up
                r = asyncio.run(_load(f"{url}/v1/chat/completions", headers, args.clients, args.duration))
                results[mode].append(r)
                print(f"keys {mode}: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                      f"errors {r['errors']}", flush=True)
                serve.delete("doka")
    finally:
        serve.shutdown()
        ray.shutdown()
        mock.terminate()
        mock.wait(30)
    off = sum(r["rps"] for r in results["off"]) / len(results["off"])
    on = sum(r["rps"] for r in results["on"]) / len(results["on"])
    print(f"\n| clients | keys | req/s (mean of {args.rounds}) | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |")
    for mode, mean in (("off", off), ("on", on)):
        rs = results[mode]
        print(f"| {args.clients} | {mode} | {mean:.1f} | {sum(r['p50'] for r in rs) / len(rs):.1f} | "
              f"{sum(r['p99'] for r in rs) / len(rs):.1f} |")
    print(f"\nthroughput loss with auth + quota: {100 * (1 - on / off):.1f}%  (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
