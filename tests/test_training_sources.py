"""The routing-more importer: each source's label type maps onto [0, 1] as docs/routing.md says,
provenance (task, source, label type, licence, cost) survives, and the broad split never puts a
held-out task's prompt (or an exact duplicate of it from another source) into training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.broad_data import canonical_task, difficulty_target, held_out_folds, scoring_pair
from training.dataset import DatasetError, load_jsonl
from training.sources import SOURCES, import_sources, read_source


def _row(id_, task, label_type, scores, costs=None, prompt=None):
    return {"id": id_, "source": "x", "task": task, "prompt": prompt or f"prompt {id_}", "label_type": label_type,
            "scores": scores, "est_costs": costs or {}}


FIXTURES = {
    "arenabench": [_row("a1", "arena-bench-v1", "gpt-4 judge score 1-10 (reference-guided)",
                        {"gpt-4-1106-preview": 10.0, "mistralai/mixtral-8x7b-chat": 1.0, "claude-v1": 5.5},
                        {"gpt-4-1106-preview": 0.01, "mistralai/mixtral-8x7b-chat": 0.0002})],
    "alpacaeval": [_row("b1", "alpaca_eval:koala", "winprob_vs_gpt-4-1106-preview (gpt-4-turbo judge)",
                        {"gpt-4-1106-preview": 0.5, "mistralai/mixtral-8x7b-chat": 0.25, "phi-2": 0.0},
                        {"gpt-4-1106-preview": 0.016, "WizardLM-13B-V1.0(not RouterBench V1.2)": None})],
    "llmrouter": [_row("c1", "natural_qa", "task metric (0/1 or F1)",
                       {"qwen2.5-7b-instruct": 0.4, "gemma-2-9b-it": 1.0, "mistral-7b-instruct-v0.3": 0.0})],
    "routerdc": [_row("d1", "ceval", "0/1 correctness (ceval/cmmlu: prob.)",
                      {"mistralai/Mistral-7B-v0.1": 0.73, "meta-llama/Meta-Llama-3-8B": 1})],
}

EXPECTED = {
    "arenabench": {"gpt-4-1106-preview": 1.0, "mixtral-8x7b-chat": 0.0, "claude-v1": 0.5},
    "alpacaeval": {"gpt-4-1106-preview": 0.5, "mixtral-8x7b-chat": 0.25, "phi-2": 0.0},
    "llmrouter": {"qwen2.5-7b-instruct": 0.4, "gemma-2-9b-it": 1.0, "mistral-7b-instruct-v0.3": 0.0},
    "routerdc": {"mistralai/Mistral-7B-v0.1": 0.73, "meta-llama/Meta-Llama-3-8B": 1.0},
}


def _write(folder: Path, key: str, rows: list[dict]) -> None:
    (folder / SOURCES[key].file).write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("key", sorted(FIXTURES))
def test_each_label_type_maps_as_documented(tmp_path: Path, key: str):
    _write(tmp_path, key, FIXTURES[key])
    [rec] = read_source(SOURCES[key], more_dir=tmp_path)
    assert rec.scores == pytest.approx(EXPECTED[key])
    extra = rec.model_extra
    assert extra["source"] == key and extra["task"] == f"{key}:{FIXTURES[key][0]['task']}"
    assert extra["label_type"] == FIXTURES[key][0]["label_type"] and extra["licence"] == SOURCES[key].licence
    want_costs = {k.rsplit("/", 1)[-1] if k.startswith("mistralai/") else k: v
                  for k, v in FIXTURES[key][0]["est_costs"].items() if v is not None}
    assert (rec.costs or {}) == want_costs


def test_judge_score_outside_its_scale_is_refused(tmp_path: Path):
    _write(tmp_path, "arenabench", [_row("a9", "arena-bench-v1", "judge", {"gpt-4-1106-preview": 11.0})])
    with pytest.raises(DatasetError, match="outside"):
        read_source(SOURCES["arenabench"], more_dir=tmp_path)


def test_routerbench_rows_keep_task_source_and_cost():
    recs = read_source(SOURCES["routerbench"])
    assert recs and {r.model_extra["source"] for r in recs} == {"routerbench"}
    assert {r.model_extra["task"] for r in recs} >= {"routerbench:mbpp", "routerbench:arc-challenge"} or \
        all(r.model_extra["task"].startswith("routerbench:") for r in recs)
    assert all(r.costs for r in recs[:50]) and all(set(r.scores.values()) <= {0.0, 1.0} for r in recs[:50])


def _combined(tmp_path: Path) -> Path:
    for k, rows in FIXTURES.items():
        _write(tmp_path, k, rows)
    # an exact duplicate prompt across sources, and enough rows per task for folds
    extra = [_row(f"c{i}", "trivia_qa", "f1", {"qwen2.5-7b-instruct": i % 2, "gemma-2-9b-it": 1.0},
                  prompt="shared prompt" if i == 2 else None) for i in range(2, 6)]
    _write(tmp_path, "llmrouter", FIXTURES["llmrouter"] + extra)
    _write(tmp_path, "routerdc", FIXTURES["routerdc"] + [
        _row("d2", "cmmlu", "p", {"mistralai/Mistral-7B-v0.1": 0.1}, prompt="shared prompt")])
    out = tmp_path / "combined.jsonl"
    import_sources(out, include=["arenabench", "alpacaeval", "llmrouter", "routerdc"], more_dir=tmp_path)
    return out


def test_broad_split_never_trains_on_a_held_out_prompt_or_its_duplicate(tmp_path: Path):
    ds = load_jsonl(_combined(tmp_path))
    folds = held_out_folds(ds, "task", min_test=1)
    assert {f.name for f in folds} == {"arena-bench-v1", "alpaca_eval:koala", "natural_qa", "trivia_qa", "ceval", "cmmlu"}
    for f in folds:
        held = {ds.prompts[i] for i in f.test}
        assert not held & {ds.prompts[i] for i in f.train}
    trivia = next(f for f in folds if f.name == "trivia_qa")
    # the routerdc duplicate of a trivia_qa prompt is dropped from that fold's training
    assert "shared prompt" not in {ds.prompts[i] for i in trivia.train}
    assert len(trivia.train) == len(ds) - len(trivia.test) - 1
    for f in held_out_folds(ds, "source", min_test=1):
        assert not {ds.prompts[i] for i in f.test} & {ds.prompts[i] for i in f.train}


def test_difficulty_target_is_standardised_per_task(tmp_path: Path):
    ds = load_jsonl(_combined(tmp_path))
    rows = np.arange(len(ds))
    y = difficulty_target(ds, rows)
    tasks = np.array([e["task"] for e in ds.extra])
    for t in set(tasks):
        m = tasks == t
        assert abs(y[m].mean()) < 1e-9
        if m.sum() > 1 and y[m].std() > 0:
            assert y[m].std() == pytest.approx(1.0)


def test_scoring_pair_prefers_gpt4_vs_mixtral_else_source_extremes(tmp_path: Path):
    ds = load_jsonl(_combined(tmp_path))
    tasks = np.array([e["task"] for e in ds.extra])
    assert scoring_pair(ds, np.flatnonzero(tasks == "arenabench:arena-bench-v1")) == ("gpt-4-1106-preview", "mixtral-8x7b-chat")
    assert scoring_pair(ds, np.flatnonzero(tasks == "llmrouter:trivia_qa")) == ("gemma-2-9b-it", "qwen2.5-7b-instruct")


def test_one_task_from_several_sources_and_splits_is_held_out_together():
    assert {canonical_task(t) for t in ("routerbench:arc-challenge", "llmrouter:arc_challenge",
                                        "routerdc:arc_challenge_test", "routerdc:arc_challenge_train")} == {"arc_challenge"}
    assert canonical_task("llmrouter:human_eval") == canonical_task("routerdc:humaneval_test") == "humaneval"
    assert canonical_task("routerdc:MATH_prealgebra") == canonical_task("llmrouter:math") == "math"
    assert canonical_task("routerdc:arc_easy_test") != canonical_task("routerdc:arc_challenge_test")


def test_every_broad_design_calls_the_strong_model_where_it_gains(monkeypatch):
    """Sign check for every design of the broad benchmark: fitted on data where the strong model's
    advantage grows with a feature, each one's in-sample APGR is well above random (the first
    pass's irt and pair_heads returned weak - strong and scored below 0.5 in-sample)."""
    from training.broad_designs import DESIGNS
    from training.dataset import Record, from_records
    from training.metrics import two_model_report

    rng = np.random.default_rng(0)
    recs, X = [], []
    for t in range(4):
        for i in range(250):
            x = rng.normal(size=8)
            hard = x[0]
            s = float(hard + rng.normal(0, 0.5) < 2.0)   # strong: right unless very hard
            w = float(hard + rng.normal(0, 0.5) < -0.2)  # weak: right only on easy prompts
            m = float(hard + rng.normal(0, 0.5) < 0.4)
            recs.append(Record(id=f"t{t}-{i}", prompt=f"t{t} p{i}", task=f"routerbench:task{t}", source="routerbench",
                               scores={"gpt-4-1106-preview": s, "mixtral-8x7b-chat": w, "mid": m}))
            X.append(x)
    ds, X = from_records(recs), np.array(X)
    rows = np.arange(len(ds))
    task0 = rows[:250]
    js, jw = ds.labels.index("gpt-4-1106-preview"), ds.labels.index("mixtral-8x7b-chat")
    for name, design in DESIGNS.items():
        score = design(X, ds, rows, "gpt-4-1106-preview", "mixtral-8x7b-chat")(X[task0])
        apgr = two_model_report(score, ds.scores[task0, js], ds.scores[task0, jw], bootstrap=0)["router"]["apgr"]
        assert apgr > 0.58, (name, apgr)


def test_contrastive_pairs_never_push_tied_models_apart():
    """RouterDC's sample-LLM loss: each prompt's top-k models against its bottom-k, a pair
    counting only where the positive scored strictly higher (0/1 tasks tie often)."""
    from training.broad_contrastive import contrastive_pairs

    nan = np.nan
    scores = np.array([[1.0, 0.0, 1.0, 0.0, nan],   # two right, two wrong
                       [1.0, 1.0, 1.0, 1.0, 1.0],   # all tied: nothing to learn
                       [0.9, nan, nan, nan, nan],   # one label: nothing to learn
                       [0.2, 0.8, 0.5, nan, 0.1]])  # k=2 of 4 labelled
    pos, neg, valid = contrastive_pairs(scores, k=2)
    assert set(pos[0][valid[0].any(axis=1)]) == {0, 2} and set(neg[0][valid[0].any(axis=0)]) == {1, 3}
    assert valid[0].all()
    assert not valid[1].any() and not valid[2].any()
    assert list(pos[3]) == [1, 2] and set(neg[3]) == {0, 4} and valid[3].all()
    for i in range(len(scores)):  # every counted pair: positive strictly better, both labelled
        for a, b in zip(*np.nonzero(valid[i])):
            assert scores[i, pos[i, a]] > scores[i, neg[i, b]]


def test_contrastive_design_routes_to_the_strong_model_where_it_wins():
    """On a synthetic set where the answer is known (the strong model beats the weak one only on
    prompts with x0 > 0; elsewhere both are right; a third model is always wrong), the contrastive
    score sim(prompt, strong) - sim(prompt, weak) is higher on fresh prompts where the strong
    model wins, with and without inner tuning; a pair the training rows barely label falls back
    to the difficulty design instead of an untrained embedding."""
    from training.broad_contrastive import fit_contrastive
    from training.broad_designs import DESIGNS, design_difficulty
    from training.dataset import Record, from_records

    rng = np.random.default_rng(1)

    def make(n, tag):
        recs, X = [], rng.normal(size=(n, 6))
        for i, x in enumerate(X):
            strong_wins = x[0] > 0
            recs.append(Record(id=f"{tag}{i}", prompt=f"{tag} {i}", task=f"routerbench:t{i % 4}", source="routerbench",
                               scores={"gpt-4-1106-preview": 1.0, "mixtral-8x7b-chat": 0.0 if strong_wins else 1.0,
                                       "bad": 0.0, **({"rare": 1.0} if i < 20 else {})}))
        return from_records(recs), X

    ds, X = make(1200, "train")
    test_ds, Xt = make(400, "test")
    rows = np.arange(len(ds))
    wins = Xt[:, 0] > 0
    for tune in (False, True):
        fit = fit_contrastive(X, ds, rows, tune=tune)
        score = fit.pair_score("gpt-4-1106-preview", "mixtral-8x7b-chat")(Xt)
        assert score[wins].mean() > score[~wins].mean() + 0.1, tune
        assert np.mean(score[wins][:, None] > score[~wins][None, :]) > 0.9, tune  # AUC
    assert fit.pair_score("rare", "mixtral-8x7b-chat") is None  # 20 labels: not learned
    fallback = DESIGNS["contrastive"](X, ds, rows, "rare", "mixtral-8x7b-chat", tune=False)(Xt)
    assert np.allclose(fallback, design_difficulty(X, ds, rows, "rare", "mixtral-8x7b-chat", tune=False)(Xt))


def test_pooled_protocol_scores_each_held_out_source_as_one_mixed_set():
    """`--by pooled`: a held-out source is one row, scored on gpt-4 vs mixtral over all its tasks
    together, so a router that ranks whole kinds of prompt (code above small talk) is seen doing so;
    per task (`--by source`) the same router has nothing to rank within each task."""
    from training.broad import evaluate_folds
    from training.dataset import Record, from_records

    recs, X = [], []
    rng = np.random.default_rng(1)
    for src, tasks in (("routerbench", ("code", "chat")), ("arenabench", ("code", "chat"))):
        for t in tasks:
            for i in range(60):
                code = t == "code"  # the strong model gains on code, both answer chat
                recs.append(Record(id=f"{src}-{t}-{i}", prompt=f"{src} {t} {i}", task=f"{src}:{t}", source=src,
                                   scores={"gpt-4-1106-preview": 1.0,
                                           "mixtral-8x7b-chat": float(rng.random() < 0.2) if code else 1.0}))
                X.append([(1.0 if code else -1.0) + rng.normal(0, 0.2), rng.normal()])
    ds, X = from_records(recs), np.array(X)
    folds = held_out_folds(ds, "source", min_test=1)
    pooled = evaluate_folds(X, ds, folds, "shipped_difficulty", bootstrap=0, pooled=True)
    assert sorted(r["held_out"] for r in pooled) == ["arenabench (pooled)", "routerbench (pooled)"]
    assert all(r["n"] == 120 and r["pair"] == "gpt-4-1106-preview vs mixtral-8x7b-chat" for r in pooled)
    per_task = evaluate_folds(X, ds, folds, "shipped_difficulty", bootstrap=0)
    # per task only the code tasks have a gap to recover (chat is a tie), and within one the kind is no signal
    assert sorted(r["held_out"] for r in per_task) == ["arenabench:code", "routerbench:code"]
    # across kinds the ranking is the whole signal: well above random pooled, nothing within a task
    assert all(r["apgr"] > 0.7 for r in pooled), pooled
    assert all(abs(r["apgr"] - 0.5) < 0.15 for r in per_task), per_task


def test_a_shipped_design_is_not_scored_on_a_pair_its_training_rows_never_label():
    """The RouterBench-only default cannot rank models only another source labels: such a fold is
    reported as not scored (and why), not as a constant-score 0.5 that drags the median toward
    random and reads as "the family gives constant scores on an unseen task"."""
    from training.broad import evaluate_folds, summary
    from training.broad_designs import pair_score, shipped_fit
    from training.dataset import Record, from_records
    from training.evaluate import constant_scores

    rng = np.random.default_rng(3)
    recs, X = [], []
    for src, task, models in (("routerbench", "code", ("gpt-4-1106-preview", "mixtral-8x7b-chat")),
                              ("routerbench", "chat", ("gpt-4-1106-preview", "mixtral-8x7b-chat")),
                              ("llmrouter", "math", ("qwen-a", "qwen-b"))):
        for i in range(80):
            hard = rng.random() < 0.5
            recs.append(Record(id=f"{src}-{task}-{i}", prompt=f"{src} {task} {i}", task=f"{src}:{task}", source=src,
                               scores={models[0]: 1.0, models[1]: float(not hard or rng.random() < 0.2)}))
            X.append([(1.0 if hard else -1.0) + rng.normal(0, 0.3), rng.normal()])
    ds, X = from_records(recs), np.array(X)
    folds = held_out_folds(ds, "task", min_test=1)
    rows = evaluate_folds(X, ds, folds, "shipped_difficulty_routerbench_only", bootstrap=0)
    by_task = {r["held_out"]: r for r in rows}
    math = by_task["llmrouter:math"]
    assert math["apgr"] is None and "qwen-a" in math["unscored"] and "qwen-b" in math["unscored"]
    assert by_task["routerbench:code"]["apgr"] is not None and by_task["routerbench:chat"]["apgr"] is not None
    s = summary(rows)
    assert s["unscored"] == ["llmrouter:math"] and "llmrouter:math" not in s["constant_scores"] and s["folds"] == 2
    # what the old report counted: the fitted artifact's score on that pair really is one value
    math_fold = next(f for f in folds if f.name == "math")
    fit = shipped_fit("shipped_difficulty_routerbench_only", X, ds, math_fold.train)
    assert constant_scores(pair_score(fit, ds, "qwen-a", "qwen-b")(X[math_fold.test])) is not None
