"""The learned router in the real gateway: `auto` routing by prompt, per-request options,
hot reload under load with zero errors, and degraded mode with recovery.

The app is deployed declaratively (as a RayService does), beside the session's static gateway on
the same Serve HTTP proxy, under its own route prefix; a reload is a Router `user_config` change.
"""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from tests.router_deployment_support import (
    CHAT, CHAT_PROBES, CODE, CODE_PROBES, GPT35, chat, learned_app, publish, train_artifact, wait_for,
)

APP = "doka-learned"
PREFIX = "/learned"


@pytest.fixture(scope="module")
def learned(gateway, mock_upstream, tmp_path_factory):
    """One learned app for the module; shares the session gateway's Serve instance and port."""
    with learned_app(mock_upstream.port, gateway.cfg["server"]["port"], tmp_path_factory.mktemp("learned-gateway"),
                     APP, PREFIX) as app:
        yield app


def test_auto_lands_on_different_models_by_prompt(learned, mock):
    assert not (set(CODE_PROBES) | set(CHAT_PROBES)) & (set(CODE) | set(CHAT))  # probes are unseen
    for prompt in CODE_PROBES:
        r = chat(learned.url, prompt)
        assert r.status_code == 200, r.text
        assert r.headers["x-doka-model"] == "mock-gpt-4", (prompt, r.headers.get("x-doka-router"))
        assert r.headers["x-doka-strategy"] == "learned"
        assert r.headers["x-doka-artifact-version"] == learned.v1
        assert r.headers["x-doka-route-reason"] == "auto:learned"
    for prompt in CHAT_PROBES:
        r = chat(learned.url, prompt)
        assert r.status_code == 200 and r.headers["x-doka-model"] == "mock-mixtral", r.headers.get("x-doka-router")


def test_per_request_cost_weight_and_candidates(learned, mock):
    prompt = CODE_PROBES[0]
    # restricting candidates keeps the router inside them
    r = chat(learned.url, prompt, doka={"candidates": ["mock-mixtral", "mock-gpt-3.5"]})
    assert r.status_code == 200 and r.headers["x-doka-model"] in {"mock-mixtral", "mock-gpt-3.5"}
    # a very high cost weight (header or body) trades quality for the cheapest model
    r = chat(learned.url, prompt, headers={"x-doka-cost-weight": "100"})
    assert r.status_code == 200 and r.headers["x-doka-model"] == "mock-mixtral"
    assert "cost weight 100" in r.headers["x-doka-router"]
    r = chat(learned.url, prompt, doka={"cost_weight": 100})
    assert r.headers["x-doka-model"] == "mock-mixtral"
    r = chat(learned.url, prompt, doka={"cost_weight": 0})
    assert r.headers["x-doka-model"] == "mock-gpt-4"
    # bad values: 400 in OpenAI's shape, naming the field
    for kw, param in [({"headers": {"x-doka-cost-weight": "cheap"}}, "x-doka-cost-weight"),
                      ({"doka": {"cost_weight": -1}}, "doka.cost_weight"),
                      ({"doka": {"candidates": ["mock-claude-sandbox"]}}, "doka.candidates"),
                      ({"doka": "fast"}, "doka")]:
        r = chat(learned.url, prompt, **kw)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    # the extension is never forwarded upstream; explicit models ignore it
    r = chat(learned.url, prompt, model="mock-gpt-3.5", doka={"cost_weight": 1})
    assert r.status_code == 200 and r.headers["x-doka-model"] == "mock-gpt-3.5"


def _load(url: str, stop: threading.Event, results: list[tuple[int, str | None, str | None]], i: int) -> None:
    with httpx.Client(timeout=60) as client:
        n = 0
        while not stop.is_set():
            prompt = CODE[(i + n) % len(CODE)]
            body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
                    "doka": {"cost_weight": 0}}
            try:
                r = client.post(f"{url}/v1/chat/completions", json=body)
                results.append((r.status_code, r.headers.get("x-doka-artifact-version"), r.headers.get("x-doka-model")))
            except httpx.HTTPError as e:
                results.append((-1, repr(e), None))
            n += 1


def test_reload_under_load_has_zero_errors(learned, mock):
    loads_before = learned.readiness().json()["router"]["loads"]
    stop = threading.Event()
    results: list[tuple[int, str | None, str | None]] = []
    clients = [threading.Thread(target=_load, args=(learned.url, stop, results, i)) for i in range(4)]
    for t in clients:
        t.start()
    try:
        wait_for(lambda: len(results) >= 20, 60, what="traffic before the reload")
        v2 = publish(learned.registry, train_artifact(learned.work / "a2", code_label=GPT35))  # new `latest`
        learned.reconfigure(artifact=v2)  # in place: Serve calls Router.reconfigure on the live replica
        wait_for(lambda: any(v == v2 for _, v, _ in results[-8:]), 120, what="v2 in the headers")
        n_after_swap = len(results)
        wait_for(lambda: len(results) >= n_after_swap + 20, 60, what="traffic after the swap")
    finally:
        stop.set()
        for t in clients:
            t.join(30)
    errors = [r for r in results if r[0] != 200]
    assert not errors, errors[:5]
    versions = [v for _, v, _ in results]
    assert versions[0] == learned.v1 and versions[-1] == v2
    first_v2 = versions.index(v2)
    assert all(v == v2 for v in versions[first_v2 + 8:])  # after the swap (and in-flight ones), only v2
    assert all(m == "mock-gpt-3.5" for _, v, m in results if v == v2)  # v2's routing, not v1's
    router = learned.readiness().json()["router"]
    assert router["artifact_version"] == v2 and router["loads"] == loads_before + 1  # same replica: no restart
    learned.v2 = v2


def _degraded_metric(url: str) -> float | None:
    m = re.search(r"^doka_router_degraded(?:\{[^}]*\})? ([0-9.]+)$", httpx.get(f"{url}/metrics", timeout=10).text, re.M)
    return float(m.group(1)) if m else None


def test_corrupt_artifact_degrades_then_recovers(learned, mock):
    v2 = getattr(learned, "v2", None) or publish(learned.registry, train_artifact(learned.work / "a2", code_label=GPT35))
    learned.reconfigure(artifact=v2)
    wait_for(lambda: learned.readiness().json()["router"]["artifact_version"] == v2, 120, what="v2 serving")

    model_file = learned.registry / "versions" / v2 / "model.skops"
    good = model_file.read_bytes()
    model_file.write_bytes(good[: len(good) // 2])  # truncated on disk
    try:
        learned.reconfigure(artifact="latest")  # latest is v2: the reload finds it corrupt
        ready = wait_for(lambda: (lambda r: r if r.json()["checks"]["router"] == "degraded" else None)(
            learned.readiness()), 120, what="degraded readiness")
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded"  # still in rotation
        assert body["router"]["degraded"] and body["router"]["serving"] == "weighted_round_robin"
        assert "modified after signing" in body["router"]["reason"]
        assert _degraded_metric(learned.url) == 1.0
        seen = set()
        for prompt in CODE[:6]:
            r = chat(learned.url, prompt)
            assert r.status_code == 200, r.text  # the gateway keeps answering
            assert r.headers["x-doka-strategy"] == "weighted_round_robin"
            assert "x-doka-artifact-version" not in r.headers
            seen.add(r.headers["x-doka-model"])
        assert len(seen) > 1  # round-robin, not the learned choice
    finally:
        model_file.write_bytes(good)
    learned.reconfigure(artifact=v2)  # a good artifact arrives: recover
    wait_for(lambda: not learned.readiness().json()["router"]["degraded"], 120, what="recovered")
    r = chat(learned.url, CODE[0])
    assert r.headers["x-doka-strategy"] == "learned" and r.headers["x-doka-artifact-version"] == v2
    assert learned.readiness().json()["status"] == "ok"
    assert _degraded_metric(learned.url) == 0.0
