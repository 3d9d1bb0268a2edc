"""A broken vLLM tier (a model path that does not exist) must not break the gateway: the chain
answers from the next tier (the mock upstream) within the vLLM tier's timeout."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.conftest import MockUpstream
from tests.vllm_support import deploy_gateway, vllm_gateway_config

pytestmark = pytest.mark.slow

APP = "doka-vllm-broken-test"
PREFIX = "/vllm-broken-test"
TIER_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def broken_gateway(ray_cluster: None, mock_upstream: MockUpstream, tmp_path_factory) -> Iterator[str]:
    from ray import serve

    missing = tmp_path_factory.mktemp("vllm") / "no-such-model"
    raw = vllm_gateway_config(mock_upstream.port, 0, name="local-broken", model_source=str(missing),
                              timeout=TIER_TIMEOUT, app_name=APP)
    # not blocking: the app never becomes RUNNING (its LLMServer cannot start), the ingress does
    url = deploy_gateway(raw, PREFIX, blocking=False)
    yield url
    serve.delete(APP)


def test_broken_vllm_tier_falls_back_to_next_tier(broken_gateway: str, mock: MockUpstream) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{broken_gateway}/v1", api_key="unused", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model="local-broken", messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    resp = raw.parse()
    assert raw.headers["x-doka-model"] == "mock-mixtral"
    assert raw.headers["x-doka-tiers-tried"] == "local-broken,mock-mixtral"
    assert raw.headers["x-doka-route-reason"] == "fallback:tier2"
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
