"""The learning loop end to end through the real gateway.

traffic -> traces -> feedback favouring one model for code prompts -> `doka train-from-traces`'s
`run_loop` (train, replay-compare against the live artifact, publish, reconfigure the running
app in place) -> `auto` now routes code prompts differently, with the new artifact version in the
response headers.
"""

from __future__ import annotations

import httpx
import pytest

from tests.router_deployment_support import CHAT, CODE, chat, deploy, learned_config, publish, train_artifact, wait_for, wait_running

APP = "doka-loop"
PREFIX = "/loop"


@pytest.fixture()
def loop_app(gateway, mock_upstream, tmp_path):
    from ray import serve

    registry = tmp_path / "registry"
    v1 = publish(registry, train_artifact(tmp_path / "a1"))  # code -> mock-gpt-4, small talk -> mock-mixtral
    port = gateway.cfg["server"]["port"]
    raw = learned_config(mock_upstream.port, port, tmp_path / "data", registry, app_name=APP, route_prefix=PREFIX)
    deploy(raw)
    wait_running(APP)
    url = f"http://127.0.0.1:{port}{PREFIX}"
    wait_for(lambda: (httpx.get(f"{url}/health/readiness", timeout=10).json().get("router") or {})
             .get("artifact_version") == v1, 120, what="v1 loaded")
    yield url, raw, v1
    serve.delete(APP)


def test_feedback_retrains_and_shifts_auto_routing(loop_app, mock, tmp_path):
    from app.config import parse_config
    from observability.feedback import load_joined
    from observability.trace_store import traces_root
    from training.from_traces import run_loop

    url, raw, v1 = loop_app
    probe = "Write a python function that checks whether a number is prime"
    before = chat(url, probe)
    assert before.headers["x-doka-model"] == "mock-gpt-4" and before.headers["x-doka-artifact-version"] == v1

    # users try every prompt on each model: they like mock-gpt-3.5 for code, mock-mixtral for small talk.
    # Real clients send a system prompt and earlier turns (here: of the other kind); routing, the
    # trace store and training must all see the same text, the last user message
    favour = {"code": "mock-gpt-3.5", "chat": "mock-mixtral"}
    n = 0
    sent: dict[str, str] = {}  # request id -> the last user message
    for kind, prompts in (("code", CODE), ("chat", CHAT)):
        for i, prompt in enumerate(prompts):
            for model in ("mock-mixtral", "mock-gpt-3.5", "mock-gpt-4"):
                score = 1.0 if model == favour[kind] else 0.0
                r = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
                    "model": model, "max_tokens": 8, "messages": _conversation(prompt, (CHAT if kind == "code" else CODE)[i])})
                assert r.status_code == 200, r.text
                sent[r.headers["x-doka-request-id"]] = prompt
                fb = httpx.post(f"{url}/v1/feedback", json={"request_id": r.headers["x-doka-request-id"], "score": score},
                                timeout=10)
                assert fb.status_code == 200, fb.text
                n += 1
    cfg = parse_config(raw)
    wait_for(lambda: sum(1 for t in load_joined(traces_root(cfg)) if t.get("feedback_score") is not None) >= n,
             60, what="traces and feedback flushed")

    recorded = {t["request_id"]: t.get("prompt") for t in load_joined(traces_root(cfg)) if t["request_id"] in sent}
    assert recorded == sent  # the trace store recorded the text routing saw (no system prompt, no old turns)

    report = run_loop(cfg, work_dir=tmp_path / "loop", reconfigure=True, holdout=0.25, seed=0)
    assert report["better"] and report["published"] and report["published"] != v1, report
    assert report["reconfigured_via"] == "controller"  # in place, through the Serve controller
    v2 = report["published"]

    after = wait_for(lambda: (lambda r: r if r.headers.get("x-doka-artifact-version") == v2 else None)(chat(url, probe)),
                     120, what="the new artifact in the headers")
    assert after.headers["x-doka-model"] == "mock-gpt-3.5"  # routing shifted with the feedback
    assert after.headers["x-doka-strategy"] == "learned"
    multi_turn = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
        "model": "auto", "max_tokens": 8, "messages": _conversation(probe, CHAT[0])})
    assert multi_turn.headers["x-doka-model"] == "mock-gpt-3.5"  # routed on its last user message
    small_talk = chat(url, "Hi there! Lovely to see you again.")
    assert small_talk.headers["x-doka-model"] == "mock-mixtral"
    assert small_talk.headers["x-doka-artifact-version"] == v2


def _conversation(last: str, earlier: str) -> list[dict[str, str]]:
    """A system prompt, an earlier exchange, then the user message the request is about."""
    return [{"role": "system", "content": "You are a careful assistant. Answer briefly."},
            {"role": "user", "content": earlier}, {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": last}]


def _ready_ok(url: str) -> dict:
    body = httpx.get(f"{url}/health/readiness", timeout=10).json()
    assert body["status"] == "ok", body  # the live router never goes degraded
    return body


def test_train_from_traces_signing_key_rule_refusal_and_publish(loop_app, tmp_path, monkeypatch):
    """No key: a one-line error; the wrong key: a refusal (the served artifact does not verify);
    the gateway's key: a publish that the gateway serves, still following `latest` (issue 31).
    The gateway answers `ok` on readiness throughout."""
    from ray.serve.context import _get_global_client

    from app.config import parse_config
    from app.serve_config import router_owner
    from observability.feedback import load_joined
    from observability.trace_store import traces_root
    from router.registry import Registry
    from training.from_traces import run_loop

    url, raw, v1 = loop_app
    monkeypatch.delenv("DOKA_SIGNING_KEY", raising=False)
    monkeypatch.delenv("DOKA_SIGNING_KEY_FILE", raising=False)
    n = 0
    for kind, prompts in (("code", CODE[:4]), ("chat", CHAT[:4])):
        for prompt in prompts:
            for model in ("mock-mixtral", "mock-gpt-3.5", "mock-gpt-4"):
                r = chat(url, prompt, model=model)
                assert r.status_code == 200, r.text
                good = model == ("mock-gpt-3.5" if kind == "code" else "mock-mixtral")
                assert httpx.post(f"{url}/v1/feedback", timeout=10, json={
                    "request_id": r.headers["x-doka-request-id"], "score": float(good)}).status_code == 200
                n += 1
    cfg = parse_config(raw)
    wait_for(lambda: sum(1 for t in load_joined(traces_root(cfg)) if t.get("feedback_score") is not None) >= n,
             60, what="traces and feedback flushed")
    registry = Registry(cfg.router.registry)

    def with_key(key):
        return parse_config({**raw, "router": {**raw["router"], "signing_key": key}})

    with pytest.raises(SystemExit) as e:  # no key anywhere (config, env, data_dir/signing.key)
        run_loop(with_key(None), work_dir=tmp_path / "nokey", reconfigure=True)
    assert "no artifact signing key" in str(e.value) and "\n" not in str(e.value)
    _ready_ok(url)

    wrong = run_loop(with_key("change-me"), work_dir=tmp_path / "wrong", reconfigure=True)
    assert wrong["published"] is None and "cannot be loaded" in wrong["refused"], wrong
    assert wrong["served"] == {"version": v1, "from": "gateway"}  # asked the running gateway
    assert registry.latest_version() == v1
    assert _ready_ok(url)["router"]["artifact_version"] == v1

    right = run_loop(cfg, work_dir=tmp_path / "right", reconfigure=True, force=True)
    v2 = right["published"]
    assert v2 and v2 != v1 and right["current"]["version"] == v1 and right["serving"] == "ready", right
    assert _ready_ok(url)["router"]["artifact_version"] == v2
    details = _get_global_client().get_serve_details()["applications"][APP]["deployed_app_config"]
    owner = next(d for d in details["deployments"] if d["name"] == router_owner(cfg))
    assert owner["user_config"]["artifact"] == "latest"  # still follows latest, not pinned to v2
