"""The egress logic (EgressCore, no Ray) against the real mock upstream.

Covers both call paths (OpenAI pass-through and litellm.Router.acompletion), error mapping,
and LiteLLM's cooldown of a failing deployment.
"""

from __future__ import annotations

import asyncio
import json
import pickle

import pytest

from app.config import parse_config
from app.errors import UpstreamError, upstream_exhausted
from deployments.egress import EgressCore
from deployments.egress_paths import is_passthrough
from tests.conftest import gateway_test_config

BODY = {"model": "ignored", "messages": [{"role": "user", "content": "hi"}]}


def _core(mock, cooldown_s: float = 0, **model_overrides) -> EgressCore:
    raw = gateway_test_config(mock.port, 1)
    raw["model_list"].append({"model_name": "litellm-mock", "litellm_params": {
        "model": "openai/gpt-3.5-turbo", "mock_response": "canned answer from litellm"}})
    return EgressCore(parse_config(raw), cooldown_s=cooldown_s)


def run(coro):
    return asyncio.run(coro)


async def _collect(agen):
    return [c async for c in agen]


def test_passthrough_selection():
    assert is_passthrough({"model": "openai/gpt-4o", "api_base": "http://x/v1"})
    assert is_passthrough({"model": "hosted_vllm/qwen", "api_base": "http://x/v1"})
    assert not is_passthrough({"model": "openai/gpt-4o"})  # no api_base: LiteLLM knows the URL
    assert not is_passthrough({"model": "anthropic/claude-3-5-sonnet", "api_base": "http://x"})
    assert not is_passthrough({"model": "openai/x", "api_base": "http://x", "mock_response": "hi"})


def test_passthrough_chat_and_stream(mock):
    async def go():
        core = _core(mock)
        try:
            done = await core.call("chat", "mock-gpt-4", BODY, 5)
            chunks = await _collect(core.stream("chat", "mock-gpt-4", {**BODY, "stream": True}, 5))
            return done, chunks
        finally:
            await core.close()

    done, chunks = run(go())
    assert done["model"] == "gpt-4-turbo" and done["choices"][0]["message"]["content"]
    assert len(chunks) == 9 and chunks[0]["object"] == "chat.completion.chunk"


def test_litellm_path_for_other_providers(mock):
    async def go():
        core = _core(mock)
        try:
            done = await core.call("chat", "litellm-mock", BODY, 5)
            chunks = await _collect(core.stream("chat", "litellm-mock", {**BODY, "stream": True}, 5))
            return done, chunks
        finally:
            await core.close()

    done, chunks = run(go())
    assert done["choices"][0]["message"]["content"] == "canned answer from litellm"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "canned answer from litellm"


@pytest.mark.parametrize("provider", ["groq/llama-3.1-8b-instant", "mistral/mistral-small-latest"])
def test_router_path_streams_in_openais_shape(mock, provider):
    """LiteLLM's Router stream (Groq, Mistral, Ollama, ...) puts usage on a chunk with an empty choice
    after the finish; clients expect OpenAI's: one id, one finish on the last choice chunk, usage
    alone on a last chunk with no choices."""
    raw = gateway_test_config(mock.port, 1)
    raw["model_list"].append({"model_name": "via-router", "litellm_params": {
        "model": provider, "api_base": f"http://127.0.0.1:{mock.port}/v1", "api_key": "mock-key"}})
    core = EgressCore(parse_config(raw), cooldown_s=0)

    async def go():
        try:
            body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
            return await _collect(core.stream("chat", "via-router", body, 5))
        finally:
            await core.close()

    chunks = run(go())
    assert mock.state()["counts"]["streams_completed"] == 1  # LiteLLM's provider path, to the mock
    with_choices = [c for c in chunks if c["choices"]]
    finishes = [c["choices"][0].get("finish_reason") for c in with_choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert with_choices[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices).startswith("mock answer")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert len({c["id"] for c in chunks}) == 1 and all("usage" not in c for c in chunks[:-1])


def test_errors_map_to_upstream_error(mock):
    async def go(fault):
        mock.state(faults={"gpt-4-turbo": fault})
        core = _core(mock)
        try:
            with pytest.raises(UpstreamError) as exc:
                await core.call("chat", "mock-gpt-4", BODY, 1)
            return exc.value
        finally:
            await core.close()

    assert run(go("503")).status == 503
    err = run(go("timeout"))
    assert err.status == 504 and err.timed_out


def test_failing_deployment_cools_down_then_recovers(mock):
    async def go():
        core = _core(mock, cooldown_s=1.5)
        try:
            mock.state(faults={"mixtral-8x7b": "503"})
            for _ in range(2):  # allowed_fails=1: the second failure starts the cooldown
                with pytest.raises(UpstreamError):
                    await core.call("chat", "mock-mixtral", BODY, 5)
            mock.state(faults={})
            with pytest.raises(UpstreamError, match="cooling down") as exc:
                await core.call("chat", "mock-mixtral", BODY, 5)
            assert exc.value.status == 503 and 0 < exc.value.retry_after <= 1.5
            # through the ingress's chain: 503 with Retry-After, as the README promises (not 502)
            answer = upstream_exhausted(["mock-mixtral"], str(exc.value), False, exc.value.status,
                                        exc.value.retry_after)
            assert answer.status == 503 and answer.headers["retry-after"] == "2"
            assert pickle.loads(pickle.dumps(exc.value)).retry_after == exc.value.retry_after  # crosses Ray
            # other models are unaffected
            assert (await core.call("chat", "mock-gpt-4", BODY, 5))["choices"]
            await asyncio.sleep(2.0)
            return await core.call("chat", "mock-mixtral", BODY, 5)
        finally:
            await core.close()

    before = mock.state()["by_model"].get("mixtral-8x7b", 0)
    assert run(go())["model"] == "mixtral-8x7b"
    assert mock.state()["by_model"]["mixtral-8x7b"] == before + 3  # the cooled-down call never left


# Events as a provider might write them: spaces after separators, non-ASCII escaped, keys in its
# own order. Encoding the decoded dict again (orjson) would give other bytes.
SPACED_EVENTS = [
    b'{"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "h\\u00e9"}}]}',
    b'{"choices": [{"index": 0, "delta": {"content": "llo"}, "finish_reason": "stop"}], "id": "c1", "object": "chat.completion.chunk", "model": "m"}',
]


def test_passthrough_stream_forwards_each_event_as_the_provider_wrote_it():
    from aiohttp import web

    from deployments.egress import PassThroughChunk
    from app.request.respond import OpenAIDialect

    async def completions(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in SPACED_EVENTS:
            await resp.write(b"data: " + event + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def go() -> list:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        core = EgressCore(parse_config({"model_list": [{"model_name": "spaced", "litellm_params": {
            "model": "openai/m", "api_base": f"http://127.0.0.1:{port}/v1", "api_key": "k"}}]}), cooldown_s=0)
        try:
            return await _collect(core.stream("chat", "spaced", {**BODY, "stream": True}, 5))
        finally:
            await core.close()
            await runner.cleanup()

    chunks = run(go())
    assert [dict(c) for c in chunks] == [json.loads(e) for e in SPACED_EVENTS]  # decoded for metering
    assert all(isinstance(c, PassThroughChunk) for c in chunks)
    assert [OpenAIDialect.chunk(c) for c in chunks] == [b"data: " + e + b"\n\n" for e in SPACED_EVENTS]
    # the check can see a re-encode: the same content as a plain dict is written differently
    assert OpenAIDialect.chunk(dict(chunks[0])) != b"data: " + SPACED_EVENTS[0] + b"\n\n"
    # across a Serve call (egress.placement: deployment) a chunk travels as a plain dict
    copy = pickle.loads(pickle.dumps(chunks[0]))
    assert type(copy) is dict and copy == dict(chunks[0])


def test_cooldown_comes_from_the_config(monkeypatch):
    """`egress.cooldown_s` sets the cooldown; DOKA_COOLDOWN_S overrides it."""
    from deployments.egress import cooldown_seconds

    models = [{"model_name": "m", "litellm_params": {"model": "openai/x"}}]
    cfg = parse_config({"model_list": models, "egress": {"cooldown_s": 7}})
    monkeypatch.delenv("DOKA_COOLDOWN_S", raising=False)
    assert cooldown_seconds(cfg) == 7
    assert cooldown_seconds(parse_config({"model_list": models})) == 30
    monkeypatch.setenv("DOKA_COOLDOWN_S", "0")
    assert cooldown_seconds(cfg) == 0
