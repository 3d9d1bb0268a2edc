"""Routing decision latency inside the router deployment (embed + score + choose).

Deploys doka's `RouterDeployment` alone (learned strategy, the latest artifact that
`doka router bootstrap` published) on a private local Ray cluster and sends `route()` calls
through a DeploymentHandle from N concurrent callers. Each decision reports `decision_ms`,
measured inside the replica from the call's start to the choice (batching wait + embedding +
scoring + policy), so it is the router's own latency; the handle round trip is reported beside
it. Prompts are RouterBench seed prompts (long few-shot ones included), cut by the featurizer.

    python -m load.bench_router                  # 1 and 50 concurrent, 20 s each
    python -m load.bench_router --concurrency 1,50 --duration 20

Gateway throughput with `auto` vs an explicit model is measured end to end by
`python -m load.bench_gateway --models mock-gpt-3.5,auto` (and `doka bench --compare`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "training" / "seed" / "routerbench_seed.jsonl"
TARGET_P99_MS = 15.0


def prompts(limit: int = 500) -> list[str]:
    """Real routing inputs: the seed set's prompts (ARC, MBPP, Winogrande; some 1-2k chars)."""
    out = []
    with SEED.open() as f:
        for line in f:
            out.append(json.loads(line)["prompt"])
            if len(out) >= limit:
                break
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def drive(handle: Any, texts: list[str], concurrency: int, duration: float,
                candidates: list[str] | None) -> dict[str, Any]:
    """N callers, each routing one prompt after the other for `duration` seconds."""
    inside: list[float] = []
    round_trip: list[float] = []
    strategies: dict[str, int] = {}
    deadline = time.perf_counter() + duration

    async def caller(i: int) -> None:
        k = i
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            d = await handle.route.remote(texts[k % len(texts)], None, candidates)
            round_trip.append((time.perf_counter() - t) * 1000)
            inside.append(float(d.decision_ms))
            strategies[d.strategy] = strategies.get(d.strategy, 0) + 1
            k += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "decisions": len(inside), "per_s": len(inside) / elapsed,
            "p50": _pct(inside, 0.5), "p99": _pct(inside, 0.99), "rt_p50": _pct(round_trip, 0.5),
            "rt_p99": _pct(round_trip, 0.99), "strategies": strategies}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.bench_router", description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,50", help="comma-separated concurrent callers")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per point")
    ap.add_argument("--registry", default=str(REPO / ".doka" / "registry"))
    ap.add_argument("--artifact", default="latest")
    args = ap.parse_args(argv)

    import yaml

    for k, v in {"HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "RAY_AUTH_MODE": "disabled",
                 "MOCK_API_KEY": os.environ.get("MOCK_API_KEY", "mock-key")}.items():
        os.environ.setdefault(k, v)
    key = REPO / ".doka" / "signing.key"
    if key.exists() and not os.environ.get("DOKA_SIGNING_KEY"):
        os.environ.setdefault("DOKA_SIGNING_KEY_FILE", str(key))
    if not (Path(args.registry) / "latest").exists():
        print(f"bench_router: no artifact in {args.registry}; run `doka router bootstrap` first", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from app.config import parse_config
    from deployments.router import RouterDeployment

    raw = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    raw["router"].update(strategy="learned", registry=args.registry, artifact=args.artifact, poll_interval_s=0)
    cfg = parse_config(raw, source="bench_router")
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    r = cfg.router
    tmp = tempfile.mkdtemp(prefix="dkrr")
    la_before = os.getloadavg()
    results = []
    try:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=tmp,
                 runtime_env={"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "DOKA_SIGNING_KEY_FILE")
                                           if k in os.environ}})
        serve.start(http_options={"location": "NoServer"})
        opts = cfg.deployments.router.serve_options()
        opts.pop("autoscaling_config", None)  # one replica: the latency of one router, not of a fleet
        app = RouterDeployment.options(**{**opts, "num_replicas": 1},
                                       user_config={"strategy": "learned", "artifact": args.artifact,
                                                    "registry": args.registry}).bind(raw)
        handle = serve.run(app, name="bench-router", route_prefix=None)
        status = handle.status.remote().result(timeout_s=120)
        if status.get("degraded"):
            print(f"bench_router: router is degraded: {status}", file=sys.stderr)
            return 1
        texts = prompts()
        candidates = cfg.auto_candidates()

        async def run_all() -> None:
            await drive(handle, texts, 4, 3, candidates)  # warm-up: ONNX arena, batch path
            for n in [int(c) for c in args.concurrency.split(",")]:
                res = await drive(handle, texts, n, args.duration, candidates)
                results.append(res)
                print(f"  {n:>3} concurrent: {res['decisions']} decisions, {res['per_s']:.0f}/s, inside router "
                      f"p50 {res['p50']:.1f} ms p99 {res['p99']:.1f} ms; handle round trip p50 {res['rt_p50']:.1f} "
                      f"p99 {res['rt_p99']:.1f} ms; {res['strategies']}", flush=True)

        asyncio.run(run_all())
        version = status.get("artifact_version") or status.get("version")
        from router.registry import Registry

        meta = json.loads((Registry(args.registry).resolve(version or args.artifact) / "metadata.json").read_text())
        featurizer = meta["featurizer"]["id"]
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
    la = os.getloadavg()
    print(f"\nrouter: artifact {version}, featurizer {featurizer} (ONNX/numpy, "
          f"{os.environ.get('DOKA_ONNX_THREADS', '1')} thread), serve.batch max {r.max_batch_size} / "
          f"{r.batch_wait_timeout_s * 1000:g} ms, 1 replica; load average before/after "
          f"{la_before[0]:.1f}/{la[0]:.1f} on {os.cpu_count()} cores\n")
    print("| concurrent | decisions | decisions/s | p50 ms (inside router) | p99 ms (inside router) | "
          "p50 ms (handle round trip) | p99 ms (handle round trip) | p99 target < 15 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for res in results:
        print(f"| {res['concurrency']} | {res['decisions']} | {res['per_s']:.0f} | {res['p50']:.1f} | "
              f"{res['p99']:.1f} | {res['rt_p50']:.1f} | {res['rt_p99']:.1f} | "
              f"{'met' if res['p99'] < TARGET_P99_MS else 'NOT met'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
