"""The local vLLM tier for real: the tiny generated Llama on vLLM CPU through ray.serve.llm,
called by the doka ingress through its deployment handle, with the OpenAI client; and load-aware
tiers against it: with `max_num_seqs: 1` a burst of requests waits in vLLM's scheduler queue, the
ingress must read that queue from vLLM's own scheduler stats (`source: vllm`), and once it reaches
`queue_limit` the chain must spill to the mock tier with the reason saying why.

vLLM starts once for the module (~80-160 s on 2 shared cores): one engine, `max_num_seqs: 1` and
`queue_limit: 2`, serves both (a single request at a time never queues)."""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import httpx
import pytest

from tests.conftest import MockUpstream
from tests.vllm_support import TINY_MODEL_DIR, delete_gateway, deploy_gateway, vllm_gateway_config

pytestmark = pytest.mark.slow

APP = "doka-vllm-test"
PREFIX = "/vllm-test"
NAME = "local-tiny"


@pytest.fixture(scope="module")
def vllm_gateway(ray_cluster: None, mock_upstream: MockUpstream) -> Iterator[str]:
    from deployments.local_models import make_tiny_model

    make_tiny_model(TINY_MODEL_DIR)
    raw = vllm_gateway_config(mock_upstream.port, 0, name=NAME, model_source=str(TINY_MODEL_DIR),
                              timeout=120, app_name=APP)
    entry = raw["model_list"][0]
    entry["vllm"]["engine_kwargs"]["max_num_seqs"] = 1  # one running; the rest wait in vLLM's queue
    entry["model_info"]["queue_limit"] = 2
    url = deploy_gateway(raw, PREFIX, blocking=True)
    yield url
    delete_gateway(raw)


def test_readiness_is_ok_with_the_tier_application_running(vllm_gateway: str) -> None:
    body = httpx.get(f"{vllm_gateway}/health/readiness", timeout=30).json()
    assert body["status"] == "ok" and "down" not in body and "local-tiny" in body["models"], body


def _client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_through_ingress_is_answered_by_vllm(vllm_gateway: str) -> None:
    raw = _client(vllm_gateway).chat.completions.with_raw_response.create(
        model="local-tiny", messages=[{"role": "user", "content": "Say hello"}], max_tokens=12, temperature=0
    )
    assert raw.headers["x-doka-model"] == "local-tiny"
    resp = raw.parse()
    assert resp.model == "local-tiny"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason in ("length", "stop")
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.completion_tokens <= 12


def test_streaming_chat_through_ingress_reports_usage(vllm_gateway: str) -> None:
    stream = _client(vllm_gateway).chat.completions.create(
        model="local-tiny", messages=[{"role": "user", "content": "Count to three"}], max_tokens=8,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(chunks) >= 3
    assert all(c.model == "local-tiny" for c in chunks)
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert usage and usage[-1].completion_tokens == 8 and usage[-1].prompt_tokens > 0
    assert isinstance(text, str)


def test_legacy_completion_through_ingress(vllm_gateway: str) -> None:
    resp = _client(vllm_gateway).completions.create(model="local-tiny", prompt="The gateway", max_tokens=5)
    assert resp.model == "local-tiny"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens == 5


def test_bad_request_to_vllm_is_an_openai_400_not_a_fallback(vllm_gateway: str) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        _client(vllm_gateway).chat.completions.create(
            model="local-tiny", messages=[{"role": "user", "content": "x"}], max_tokens=100_000
        )
    body = err.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert "max_tokens" in body["error"]["message"]


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
