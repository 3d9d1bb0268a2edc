"""Load-aware tiers against real vLLM (slow): the tiny generated Llama on vLLM CPU through
ray.serve.llm with `max_num_seqs: 1`, so a burst of requests waits in vLLM's scheduler queue.
The ingress must read that queue from vLLM's own scheduler stats (`source: vllm`), and once it
reaches `queue_limit` the chain must spill to the mock tier with the reason saying why."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import httpx
import pytest

from tests.conftest import MockUpstream
from tests.vllm_support import TINY_MODEL_DIR, deploy_gateway, vllm_gateway_config

pytestmark = pytest.mark.slow

APP = "doka-vllm-load-test"
PREFIX = "/vllm-load-test"
NAME = "local-tiny-q"


@pytest.fixture(scope="module")
def vllm_gateway(ray_cluster: None, mock_upstream: MockUpstream) -> Iterator[str]:
    from ray import serve

    from deployments.local_models import make_tiny_model

    make_tiny_model(TINY_MODEL_DIR)
    raw = vllm_gateway_config(mock_upstream.port, 0, name=NAME, model_source=str(TINY_MODEL_DIR),
                              timeout=120, app_name=APP)
    entry = raw["model_list"][0]
    entry["vllm"]["engine_kwargs"]["max_num_seqs"] = 1  # one running; the rest wait in vLLM's queue
    entry["model_info"]["queue_limit"] = 2
    url = deploy_gateway(raw, PREFIX, blocking=True)
    yield url
    serve.delete(APP)


def _load(url: str) -> dict | None:
    return (httpx.get(f"{url}/health/readiness", timeout=10).json().get("load") or {}).get(NAME)


def test_vllm_scheduler_queue_is_read_and_a_full_tier_spills(vllm_gateway: str) -> None:
    from openai import AsyncOpenAI

    deadline = time.time() + 30
    while (row := _load(vllm_gateway)) is None and time.time() < deadline:
        time.sleep(0.5)
    assert row is not None and row["waiting"] == 0 and row["queue_limit"] == 2, row

    async def burst() -> tuple[list, int, list]:
        c = AsyncOpenAI(base_url=f"{vllm_gateway}/v1", api_key="unused", max_retries=0, timeout=300)
        calls = [asyncio.ensure_future(c.chat.completions.with_raw_response.create(
            model=NAME, messages=[{"role": "user", "content": f"Tell a story {i}"}], max_tokens=200,
            temperature=1.0)) for i in range(6)]
        most, seen, spilled = 0, [], []
        while not all(x.done() for x in calls):
            row = await asyncio.to_thread(_load, vllm_gateway)
            if row is not None:
                seen.append(row)
                most = max(most, row["waiting"])
                if row["full"] and not spilled:  # the queue is at its limit: the chain goes on
                    spilled.append(await c.chat.completions.with_raw_response.create(
                        model="local-chain", messages=[{"role": "user", "content": "hi"}], max_tokens=8))
            await asyncio.sleep(0.2)
        return [await x for x in calls], most, seen + spilled

    answers, most, seen = asyncio.run(burst())
    assert all(a.headers["x-doka-model"] in (NAME, "mock-mixtral") for a in answers)
    assert most >= 2, seen
    # vLLM's scheduler stats, not the frontend's guess (that is only used before the first engine step)
    assert any(r["source"] == "vllm" and r["waiting"] >= 2 for r in seen if isinstance(r, dict)), seen
    spilled = [r for r in seen if not isinstance(r, dict)]
    assert spilled, seen
    assert spilled[0].headers["x-doka-model"] == "mock-mixtral"
    assert spilled[0].headers["x-doka-route-reason"] == f"fallback:tier2;skipped={NAME}:queue_full"
    time.sleep(1.5)
    assert _load(vllm_gateway)["waiting"] == 0  # the queue drained; the reading follows
