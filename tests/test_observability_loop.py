"""The learning loop without Serve: traces + feedback -> dataset -> train -> compare -> publish."""

from __future__ import annotations

import pytest

from app.config import parse_config
from observability.feedback import FeedbackIn, FeedbackStore
from observability.trace_store import TraceRecord, TraceStore
from training.from_traces import dataset_rows, run_loop

MATH = [f"what is {a} plus {b}? show the arithmetic" for a, b in [(2, 3), (17, 5), (40, 2), (9, 9), (123, 7), (6, 11), (81, 19), (3, 14)]]
POEM = [f"write a short poem about {w}" for w in ["autumn leaves", "the sea", "a lost cat", "city rain", "old trains", "snowfall", "a lighthouse", "spring"]]


def _cfg(tmp_path):
    return parse_config({
        "server": {"data_dir": str(tmp_path)},
        "model_list": [
            {"model_name": "m-math", "litellm_params": {"model": "openai/a"},
             "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6}},
            {"model_name": "m-poet", "litellm_params": {"model": "openai/b"},
             "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "route_label": "poet-label"}},
        ],
        "router": {"strategy": "learned", "registry": str(tmp_path / "registry")},
    })


def _log(tmp_path, favour: dict[str, str], tag: str) -> None:
    """Each prompt answered by both models; feedback scores the favoured one 1, the other 0."""
    root = str(tmp_path / "traces")
    traces, feedback = TraceStore(root), FeedbackStore(root)
    for kind, prompts in (("math", MATH), ("poem", POEM)):
        for i, p in enumerate(prompts):
            for model in ("m-math", "m-poet"):
                rid = f"{tag}-{kind}-{i}-{model}"
                traces.append(TraceRecord(request_id=rid, requested_model="auto", model=model, prompt=p, cost=1e-5))
                feedback.add(FeedbackIn(request_id=rid, score=1.0 if model == favour[kind] else 0.0))
    traces.close()
    feedback.close()


def test_dataset_rows_use_route_labels_and_skip_unusable(tmp_path):
    cfg = _cfg(tmp_path)
    joined = [
        {"request_id": "1", "prompt": "p", "model": "m-poet", "status_code": 200, "feedback_score": 0.5, "cost": 0.1},
        {"request_id": "2", "prompt": "p", "model": "m-poet", "status_code": 200, "feedback_score": 1.0, "cost": 0.3},
        {"request_id": "3", "prompt": "p", "model": "m-math", "status_code": 200, "feedback_score": 0.0},
        {"request_id": "4", "prompt": "q", "model": "m-math", "status_code": 502, "feedback_score": 1.0},
        {"request_id": "5", "prompt": "[redacted sha256:00]", "model": "m-math", "status_code": 200, "feedback_score": 1.0},
    ]
    rows = dataset_rows(joined, cfg)
    assert len(rows) == 1
    assert rows[0]["scores"] == {"poet-label": 0.75, "m-math": 0.0}
    assert rows[0]["costs"] == {"poet-label": pytest.approx(0.2)}


def test_loop_publishes_only_a_better_router(tmp_path, monkeypatch):
    from router.registry import Registry
    from router.runtime import LearnedRouter

    monkeypatch.setenv("DOKA_SIGNING_KEY", "test-signing-key")
    cfg = _cfg(tmp_path)
    _log(tmp_path, {"math": "m-math", "poem": "m-poet"}, "a")

    first = run_loop(cfg, work_dir=tmp_path / "loop1", reconfigure=False, holdout=0.25)
    assert first["current"] is None and first["published"]
    registry = Registry(cfg.router.registry)
    assert registry.latest_version() == first["published"]
    live = LearnedRouter.load(cfg.router.registry, "latest", "test-signing-key")
    P = live.predict(["what is 55 plus 8? show the arithmetic", "write a short poem about the moon"])
    math_col, poet_col = live.labels.index("m-math"), live.labels.index("poet-label")
    assert P[0, math_col] > P[0, poet_col] and P[1, poet_col] > P[1, math_col]

    # the same evidence again: the candidate is not better than what is live, so nothing is published
    second = run_loop(cfg, work_dir=tmp_path / "loop2", reconfigure=False, holdout=0.25)
    assert second["published"] is None and not second["better"]
    assert registry.latest_version() == first["published"]

    # users now prefer the other model for poems: the live router is worse on that evidence
    _log(tmp_path, {"math": "m-math", "poem": "m-math"}, "b")
    _log(tmp_path, {"math": "m-math", "poem": "m-math"}, "c")
    third = run_loop(cfg, work_dir=tmp_path / "loop3", reconfigure=False, holdout=0.25)
    assert third["better"] and third["published"] and third["published"] != first["published"]
    assert third["candidate"]["value"] > third["current"]["value"]
