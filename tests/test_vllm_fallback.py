"""A broken vLLM tier (a model path that does not exist) must not break the gateway: the chain
skips it (deployments/tier_check.py knows before any deploy) and answers from the next tier."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.conftest import MockUpstream
from tests.vllm_support import delete_gateway, deploy_gateway, vllm_gateway_config

pytestmark = pytest.mark.slow

APP = "doka-vllm-broken-test"
PREFIX = "/vllm-broken-test"
TIER_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def broken_gateway(ray_cluster: None, mock_upstream: MockUpstream, tmp_path_factory) -> Iterator[str]:
    missing = tmp_path_factory.mktemp("vllm") / "no-such-model"
    raw = vllm_gateway_config(mock_upstream.port, 0, name="local-broken", model_source=str(missing),
                              timeout=TIER_TIMEOUT, app_name=APP)
    # tier_check knows it cannot start: no tier application; the gateway names it and skips it
    url = deploy_gateway(raw, PREFIX, blocking=False)
    yield url
    delete_gateway(raw)


def test_broken_vllm_tier_falls_back_to_next_tier(broken_gateway: str, mock: MockUpstream) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{broken_gateway}/v1", api_key="unused", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model="local-broken", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    resp = raw.parse()
    assert raw.headers["x-doka-model"] == "mock-mixtral"
    assert raw.headers["x-doka-tiers-tried"] == "mock-mixtral"  # skipped, never called
    assert raw.headers["x-doka-route-reason"] == "fallback:tier2;skipped=local-broken:down"
    assert resp.choices[0].message.content
    assert resp.usage.total_tokens > 0


def test_broken_vllm_tier_falls_back_when_streaming(broken_gateway: str, mock: MockUpstream) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{broken_gateway}/v1", api_key="unused", max_retries=0, timeout=60)
    with client.chat.completions.with_streaming_response.create(
        model="local-chain", messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        assert raw.headers["x-doka-model"] == "mock-mixtral"
        chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_readiness_names_the_left_out_tier(broken_gateway: str) -> None:
    import httpx

    r = httpx.get(f"{broken_gateway}/health/readiness", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "degraded"
    assert "weights not found" in r.json()["down"]["local-broken"]
