"""The unmodified OpenAI SDK against a real doka Serve app (mock upstream behind it)."""

from __future__ import annotations

import httpx


def test_models_listing(gateway, mock):
    ids = [m.id for m in gateway.client().models.list().data]
    assert ids[0] == "auto"
    assert {"mock-mixtral", "mock-gpt-3.5", "mock-gpt-4", "mock-claude-sandbox", "default"} <= set(ids)
    assert "local-tiny" not in ids  # removed from the test config, so not listed


def test_chat_plain_with_headers(gateway, mock):
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="mock-gpt-3.5", messages=[{"role": "user", "content": "Hello gateway"}])
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("mock answer from gpt-3.5-turbo")
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-doka-model"] == "mock-gpt-3.5"
    assert completion.model == "mock-gpt-3.5"  # doka's name; the provider's is in a header (issue 31)
    assert raw.headers["x-doka-upstream-model"] == "gpt-3.5-turbo"
    assert raw.headers["x-doka-route-reason"] == "explicit"
    assert raw.headers["x-doka-tiers-tried"] == "mock-gpt-3.5"
    assert raw.headers["x-doka-request-id"]


def test_chat_streaming_chunk_by_chunk(gateway, mock):
    stream = gateway.client().chat.completions.create(
        model="mock-gpt-4", messages=[{"role": "user", "content": "stream please"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("mock answer from gpt-4-turbo")
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 8  # not merged
    assert {c.model for c in chunks} == {"mock-gpt-4"}  # every chunk, the usage one too
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_completions_plain_and_stream(gateway, mock):
    client = gateway.client()
    done = client.completions.create(model="mock-gpt-3.5", prompt="Once upon a time")
    assert done.choices[0].text.startswith("mock answer") and done.model == "mock-gpt-3.5"
    parts = list(client.completions.create(model="mock-gpt-3.5", prompt="Once", stream=True))
    assert {p.model for p in parts} == {"mock-gpt-3.5"}
    assert "".join(p.choices[0].text for p in parts if p.choices).startswith("mock answer")


def test_auto_goes_through_the_router(gateway, mock):
    client = gateway.client()
    seen = set()
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "route me"}])
        assert raw.headers["x-doka-route-reason"] == "auto:weighted_round_robin"
        seen.add(raw.headers["x-doka-model"])
    assert seen == {"mock-mixtral", "mock-gpt-3.5", "mock-gpt-4"}  # equal weights spread evenly


def test_parallel_model_reachable_by_name(gateway, mock):
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="mock-claude-sandbox", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-doka-model"] == "mock-claude-sandbox"


def test_chain_name_routes_along_the_chain(gateway, mock):
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-doka-model"] == "mock-mixtral"
    assert raw.headers["x-doka-route-reason"] == "chain:default"


def test_health_and_metrics(gateway):
    assert httpx.get(f"{gateway.url}/health/liveliness").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/health/readiness", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["router"] == "ok"
    metrics = httpx.get(f"{gateway.url}/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text
