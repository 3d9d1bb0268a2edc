"""Gateway overhead on the local vLLM tier: doka's ingress vs ray.serve.llm's own OpenAI app.

Both paths hit the *same* LLMServer engine (one vLLM on the CPU, so the comparison is not
skewed by two engines fighting over 2 cores):

* gateway: client -> Serve proxy -> doka Ingress -> VLLMBackend -> LLMServer (the doka graph)
* direct:  client -> Serve proxy -> ray.serve.llm OpenAiIngress -> LLMServer (what
  `build_openai_app` deploys: the same ingress class, options and model card, bound to a
  handle of the gateway's LLMServer deployment instead of a second engine)

Same streamed chat requests, same concurrency, phases interleaved (gateway, direct, gateway,
direct, ...) so drift in the shared machine's load hits both alike. Reports time to first
token (first content chunk) and output tokens/s (from usage), and the gateway/direct ratios.

    python -m load.bench_vllm --requests 24 --concurrency 4 --max-tokens 32 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GW_APP, GW_PREFIX = "doka-bench-vllm", "/gw"
DIRECT_APP, DIRECT_PREFIX = "raysllm-bench-vllm", "/direct"
MODEL = "local-tiny"


def _gateway_config(port: int, interval_ms: float | None = None) -> dict[str, Any]:
    import yaml

    raw = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    entry = next(m for m in raw["model_list"] if m.get("provider") == "vllm" and m["model_name"] == MODEL)
    entry["vllm"]["model_source"] = str(REPO / ".doka" / "models" / "tiny-llama")
    entry["model_info"]["timeout"] = 300
    entry["model_info"]["allow_client_params"] = ["ignore_eos"]  # vLLM's own sampling option (fixed lengths)
    if interval_ms is not None:  # the one LLMServer both paths share: same setting for both
        entry["vllm"]["stream_batching_interval_ms"] = interval_ms
    raw["model_list"] = [entry]
    raw["fallbacks"] = {}
    raw["server"].update(port=port, app_name=GW_APP, data_dir=str(REPO / ".doka" / "bench"))
    raw["accounts"] = {"require_keys": False, "master_key": None}
    raw["router"].update(strategy="weighted_round_robin", registry=None)
    raw["deployments"] = {k: {"num_cpus": 0.1, "max_ongoing_requests": 256} for k in ("ingress", "router", "egress")}
    return raw


def _deploy(port: int, interval_ms: float | None = None) -> None:
    from ray import serve
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata

    from app.config import parse_config
    from app.graph import build_apps
    from deployments.tier_apps import tier_apps
    from deployments.vllm import llm_config_for

    cfg = parse_config(_gateway_config(port, interval_ms))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    apps = build_apps(cfg)  # the gateway, and the vLLM tier as its own application (no route)
    gateway = apps.pop(GW_APP)
    for name, tier in apps.items():
        serve.run(tier, name=name, route_prefix=None)
    serve.run(gateway, name=GW_APP, route_prefix=GW_PREFIX)
    llm_config = llm_config_for(cfg.model(MODEL))
    where = tier_apps(cfg)[MODEL]
    server = serve.get_deployment_handle(where["deployment"], app_name=where["app"])
    ingress = serve.deployment(make_fastapi_ingress(OpenAiIngress),
                               **OpenAiIngress.get_deployment_options([llm_config]))
    ingress = ingress.options(ray_actor_options={"num_cpus": 0.1})
    serve.run(ingress.bind(llm_deployments={MODEL: server},
                           model_cards={MODEL: to_model_metadata(MODEL, llm_config)}, lora_paths={}),
              name=DIRECT_APP, route_prefix=DIRECT_PREFIX)


async def _one(client: Any, max_tokens: int, prompt: str) -> dict[str, float]:
    t0 = time.perf_counter()
    ttft = None
    usage = None
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        if chunk.usage:
            usage = chunk.usage
    total = time.perf_counter() - t0
    return {"ttft": ttft if ttft is not None else total, "total": total,
            "tokens": float(usage.completion_tokens if usage else 0)}


async def _phase(base_url: str, n: int, concurrency: int, max_tokens: int) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def run(i: int) -> dict[str, float]:
        async with sem:
            return await _one(client, max_tokens, f"Request {i}: tell me about the gateway and the router.")

    t0 = time.perf_counter()
    results = await asyncio.gather(*(run(i) for i in range(n)))
    wall = time.perf_counter() - t0
    await client.close()
    return {"results": results, "wall": wall}


def _summary(phases: list[dict[str, Any]]) -> dict[str, float]:
    res = [r for p in phases for r in p["results"]]
    ttfts = sorted(r["ttft"] for r in res)
    tokens = sum(r["tokens"] for r in res)
    wall = sum(p["wall"] for p in phases)
    return {
        "requests": len(res),
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p90_ms": 1000 * ttfts[int(0.9 * (len(ttfts) - 1))],
        "output_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "per_request_tokens_per_s": statistics.median(r["tokens"] / max(r["total"] - r["ttft"], 1e-9) for r in res),
    }


async def _bench(port: int, args: argparse.Namespace) -> dict[str, Any]:
    urls = {"gateway": f"http://127.0.0.1:{port}{GW_PREFIX}/v1", "direct": f"http://127.0.0.1:{port}{DIRECT_PREFIX}/v1"}
    for url in urls.values():  # warm-up, not measured
        await _phase(url, args.concurrency, args.concurrency, 4)
    phases: dict[str, list] = {"gateway": [], "direct": []}
    for _ in range(args.rounds):
        for name, url in urls.items():
            phases[name].append(await _phase(url, args.requests, args.concurrency, args.max_tokens))
    out = {name: _summary(p) for name, p in phases.items()}
    g, d = out["gateway"], out["direct"]
    out["ratio"] = {
        "ttft_p50_gateway_over_direct": g["ttft_p50_ms"] / d["ttft_p50_ms"],
        "tokens_per_s_gateway_over_direct": g["tokens_per_s"] / d["tokens_per_s"],
        "ttft_p50_added_ms": g["ttft_p50_ms"] - d["ttft_p50_ms"],
    }
    out["load"] = {"requests_per_phase": args.requests, "concurrency": args.concurrency,
                   "max_tokens": args.max_tokens, "rounds": args.rounds}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=24, help="requests per phase")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="gateway/direct phase pairs, interleaved")
    p.add_argument("--port", type=int, default=8631)
    p.add_argument("--stream-batching-interval-ms", type=float, default=None,
                   help="vllm.stream_batching_interval_ms for the shared LLMServer (default: ray.serve.llm's, 50 ms)")
    p.add_argument("--out", default=str(REPO / ".doka" / "bench" / "vllm.json"))
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import logging

    import ray
    from ray import serve

    logging.getLogger("httpx").setLevel(logging.WARNING)

    from deployments.local_models import make_tiny_model

    make_tiny_model(REPO / ".doka" / "models" / "tiny-llama")
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        _deploy(args.port, args.stream_batching_interval_ms)
        startup = time.perf_counter() - t0
        out = asyncio.run(_bench(args.port, args))
        out["startup_s"] = startup
        out["stream_batching_interval_ms"] = args.stream_batching_interval_ms
    finally:
        serve.shutdown()
        ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
