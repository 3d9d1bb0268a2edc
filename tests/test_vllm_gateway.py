"""The local vLLM tier for real: the tiny generated Llama on vLLM CPU through ray.serve.llm,
called by the doka ingress through its deployment handle, with the OpenAI client.

vLLM starts once for the module (~80-160 s on 2 shared cores)."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.conftest import MockUpstream
from tests.vllm_support import TINY_MODEL_DIR, delete_gateway, deploy_gateway, vllm_gateway_config

pytestmark = pytest.mark.slow

APP = "doka-vllm-test"
PREFIX = "/vllm-test"


@pytest.fixture(scope="module")
def vllm_gateway(ray_cluster: None, mock_upstream: MockUpstream) -> Iterator[str]:
    from deployments.local_models import make_tiny_model

    make_tiny_model(TINY_MODEL_DIR)
    raw = vllm_gateway_config(mock_upstream.port, 0, name="local-tiny", model_source=str(TINY_MODEL_DIR),
                              timeout=120, app_name=APP)
    url = deploy_gateway(raw, PREFIX, blocking=True)
    yield url
    delete_gateway(raw)


def test_readiness_is_ok_with_the_tier_application_running(vllm_gateway: str) -> None:
    import httpx

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
