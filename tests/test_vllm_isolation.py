"""A vLLM tier whose engine fails AFTER tier_check passed (weights there, but a garbage
config.json) fails only its own Serve application (issue 31): the gateway application runs and is
ready, readiness names the tier with Serve's message, the default chain and `auto` answer from the
other tiers (the route reason says it was skipped), an explicit request to it is a 503 in OpenAI's
shape with the reason; redeployed with good weights, the tier serves again with the same gateway.

One vLLM start for the module (~80-160 s on 2 shared cores) plus the one failed try (`start_retries: 1`)."""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import MockUpstream
from tests.vllm_support import TINY_MODEL_DIR, delete_gateway, deploy_gateway, vllm_gateway_config

pytestmark = pytest.mark.slow

APP = "doka-vllm-isolation-test"
PREFIX = "/vllm-isolation-test"
TIER = "local-broken"
TIER_APP = f"{APP}-tier-{TIER}"


def _readiness(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/health/readiness", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _wait(predicate, what: str, timeout: float = 600) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def isolated(ray_cluster: None, mock_upstream: MockUpstream, tmp_path_factory) -> Iterator[tuple[str, dict]]:
    broken = tmp_path_factory.mktemp("vllm") / "garbage-model"
    broken.mkdir()
    (broken / "config.json").write_text("{this is not a model config")  # exists: tier_check passes
    raw = vllm_gateway_config(mock_upstream.port, 0, name=TIER, model_source=str(broken), timeout=120,
                              app_name=APP)
    raw["model_list"][0]["model_info"]["parallel"] = False  # an `auto` candidate too
    raw["model_list"][0]["vllm"]["start_retries"] = 1  # broken weights: failed after one try, not three
    # explicit `local-broken`: its first chain ends with it, so nothing follows it (a clear 503);
    # `default` starts with it, so the chain skips it
    raw["fallbacks"] = {"tail": ["mock-gpt-3.5", TIER], "default": [TIER, "mock-mixtral", "mock-gpt-4"]}
    url = deploy_gateway(raw, PREFIX, blocking=False)
    yield url, raw
    delete_gateway(raw)


@pytest.fixture(scope="module")
def failed(isolated: tuple[str, dict]) -> str:
    """The gateway once Serve gave up on the tier's application (DEPLOY_FAILED)."""
    url, _ = isolated
    _wait(lambda: "DEPLOY_FAILED" in (_readiness(url).get("down") or {}).get(TIER, ""), "the tier app to fail")
    return url


def test_the_gateway_is_ready_and_names_the_failed_tier_with_serves_message(failed: str) -> None:
    from ray import serve

    apps = serve.status().applications
    assert apps[APP].status == "RUNNING"  # the gateway's own application is untouched
    assert apps[TIER_APP].status == "DEPLOY_FAILED"
    body = _readiness(failed)
    assert body["status"] == "degraded" and body["checks"]["models"] == "degraded"
    why = body["down"][TIER]
    assert why.startswith(f"Serve application {TIER_APP} is DEPLOY_FAILED: ") and len(why) <= 600, why


def test_the_default_chain_and_auto_answer_from_the_other_tiers(failed: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{failed}/v1", api_key="unused", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    assert raw.headers["x-doka-model"] == "mock-mixtral"
    assert raw.headers["x-doka-tiers-tried"] == "mock-mixtral"  # skipped, never called
    assert raw.headers["x-doka-route-reason"] == "fallback:tier2;skipped=local-broken:down"
    assert raw.parse().choices[0].message.content
    for _ in range(4):  # round robin over the candidates: the failed one is never picked
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert raw.headers["x-doka-model"] != TIER
        assert "skipped=local-broken:down" in raw.headers["x-doka-route-reason"]
    with client.chat.completions.with_streaming_response.create(
            model="default", messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True) as s:
        assert s.headers["x-doka-model"] == "mock-mixtral"
        assert "".join(c.choices[0].delta.content or "" for c in s.parse() if c.choices)


def test_an_explicit_request_to_the_failed_tier_is_a_clear_503(failed: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{failed}/v1", api_key="unused", max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=TIER, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert err.value.status_code == 503
    error = err.value.response.json()["error"]
    assert error["code"] == "model_unavailable" and error["type"]
    assert TIER in error["message"] and "DEPLOY_FAILED" in error["message"]
    assert err.value.response.headers["x-doka-tiers-down"] == TIER


def test_the_tier_redeployed_healthy_serves_again_without_a_gateway_restart(
        failed: str, isolated: tuple[str, dict]) -> None:
    from openai import OpenAI
    from ray import serve

    from app.config import ModelEntry
    from app.graph import build_tier_app
    from deployments.local_models import make_tiny_model

    _, raw = isolated
    gateway_deployed_at = serve.status().applications[APP].last_deployed_time_s
    make_tiny_model(TINY_MODEL_DIR)
    entry = ModelEntry.model_validate({**raw["model_list"][0], "vllm": {
        **raw["model_list"][0]["vllm"], "model_source": str(TINY_MODEL_DIR)}})
    serve._run(build_tier_app(entry), name=TIER_APP, route_prefix=None, _blocking=True)  # the operator's fix
    _wait(lambda: _readiness(failed)["status"] == "ok", "readiness to be ok again", timeout=30)
    client = OpenAI(base_url=f"{failed}/v1", api_key="unused", max_retries=0, timeout=120)
    raw_resp = client.chat.completions.with_raw_response.create(
        model=TIER, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert raw_resp.headers["x-doka-model"] == TIER and raw_resp.parse().usage.completion_tokens > 0
    assert serve.status().applications[APP].last_deployed_time_s == gateway_deployed_at  # same gateway
