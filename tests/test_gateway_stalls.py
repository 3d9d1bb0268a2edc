"""Stream stalls through the real gateway (deployments/stalls.py), the unmodified `openai` SDK
streaming, the in-repo mock injecting the stall (load/mock_core.py faults), keys on so each case
checks its ledger row.

- a tier that never answers (`timeout`: no response at all; `silent`: headers, then nothing) is
  left after its `first_token_timeout_s` and the next tier answers, route reason
  `fallback:tier2:first_token_timeout=<model>`;
- a tier that sends one chunk and stalls (`stall`) is ended after `stream_idle_timeout_s` with an
  OpenAI error event (code `stream_stalled`), one ledger row charged for what was delivered.

Bounds are loose (the timeout + SLACK) because the box is shared and loaded.
"""

from __future__ import annotations

import time

import openai
import pytest

from tests.faults_support import deployed_app

APP, PREFIX = "doka-stalls", "/stalls"
FIRST_TOKEN_S, IDLE_S, TIER_S = 2.0, 2.0, 20.0
SLACK = 3.0
STALLER = "stalling-model"  # the upstream name the mock injects faults for


def _tweak(raw: dict) -> None:
    gpt4 = next(m for m in raw["model_list"] if m["model_name"] == "mock-gpt-4")
    base = gpt4["litellm_params"]["api_base"]
    raw["model_list"] += [
        {"model_name": "mock-staller",
         "litellm_params": {"model": f"openai/{STALLER}", "api_base": base, "api_key": "os.environ/MOCK_API_KEY"},
         "model_info": {"tier": "cheap", "timeout": TIER_S, "first_token_timeout_s": FIRST_TOKEN_S,
                        "stream_idle_timeout_s": IDLE_S, "parallel": True,
                        "input_cost_per_token": 1.0e-6, "output_cost_per_token": 2.0e-6}},
        {"model_name": "mock-ollama-staller",
         "litellm_params": {"model": f"ollama_chat/{STALLER}", "api_base": base.removesuffix("/v1")},
         "model_info": {"tier": "local", "timeout": TIER_S, "first_token_timeout_s": FIRST_TOKEN_S,
                        "stream_idle_timeout_s": IDLE_S, "parallel": True}},
    ]
    raw["fallbacks"]["stall-chain"] = ["mock-staller", "mock-gpt-4"]
    raw["fallbacks"]["ollama-stall-chain"] = ["mock-ollama-staller", "mock-gpt-4"]


@pytest.fixture(scope="module")
def app(ray_cluster, mock_upstream, tmp_path_factory):
    yield from deployed_app(APP, PREFIX, mock_upstream.port, str(tmp_path_factory.mktemp("stalls")), tweak=_tweak)


@pytest.fixture(scope="module")
def key(app):
    return app.new_key()


def _rows(app, key, request_id: str) -> list[dict]:
    deadline = time.time() + 10  # a cut stream settles in a task of its own: give it a moment
    while True:
        rows = [r for r in app.ledger(key["key_id"]) if r["request_id"] == request_id]
        if rows or time.time() > deadline:
            return rows
        time.sleep(0.2)


@pytest.mark.parametrize("chain,staller", [("stall-chain", "mock-staller"),
                                           ("ollama-stall-chain", "mock-ollama-staller")], ids=["openai", "ollama"])
@pytest.mark.parametrize("fault", ["timeout", "silent"])
def test_a_tier_that_never_answers_falls_through_after_its_first_token_timeout(app, key, mock, fault, chain,
                                                                                   staller):
    mock.state(faults={STALLER: fault})
    started = time.monotonic()
    with app.openai(key, timeout=60).chat.completions.with_streaming_response.create(
            model=chain, messages=[{"role": "user", "content": "hello"}], stream=True) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        headers = raw.headers
    elapsed = time.monotonic() - started
    assert elapsed < FIRST_TOKEN_S + SLACK, elapsed  # not the tier's 20 s
    assert headers["x-doka-model"] == "mock-gpt-4" and text.startswith("mock answer from gpt-4-turbo")
    assert headers["x-doka-route-reason"] == f"fallback:tier2:first_token_timeout={staller}"
    assert headers["x-doka-tiers-tried"] == f"{staller},mock-gpt-4"
    assert mock.state()["by_model"].get(STALLER) == 1
    rows = _rows(app, key, headers["x-doka-request-id"])
    assert [(r["model"], r["status"], r["route_reason"]) for r in rows] == [
        ("mock-gpt-4", 200, f"fallback:tier2:first_token_timeout={staller}")]


@pytest.mark.parametrize("model", ["mock-staller", "mock-ollama-staller"], ids=["openai", "ollama"])
def test_a_stream_that_stalls_after_its_first_chunk_ends_with_an_error_event_and_is_charged(app, key, mock, model):
    mock.state(faults={STALLER: "stall"})
    got: list[str] = []
    with app.openai(key, timeout=60).chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": "hello"}], stream=True) as raw:
        rid = raw.headers["x-doka-request-id"]
        with pytest.raises(openai.APIError) as err:
            for c in raw.parse():
                if not got:
                    first_at = time.monotonic()
                got.extend(c.choices[0].delta.content or "" for c in [c] if c.choices)
    ended = time.monotonic() - first_at
    assert ended < IDLE_S + SLACK, ended  # not the tier's 20 s
    assert "".join(got) == "mock "  # the one chunk the tier sent, nothing after it
    assert err.value.code == "stream_stalled" and "mid-stream" in err.value.message
    rows = _rows(app, key, rid)
    assert len(rows) == 1, rows  # settled exactly once
    row = rows[0]
    assert (row["model"], row["status"], row["stream"]) == (model, 504, True)
    assert row["completion_tokens"] >= 1  # what was delivered ("mock "), not the tier's whole answer
    assert row["cost_usd"] == (0.0 if model == "mock-ollama-staller" else pytest.approx(
        row["prompt_tokens"] * 1.0e-6 + row["completion_tokens"] * 2.0e-6))
    assert app.wait_no_holds(key["key_id"], timeout=10) == 0  # its reservation is closed
