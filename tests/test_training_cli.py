"""`doka router ...` end to end, in-process: import, train, eval (both modes, plot), publish, bootstrap."""

import json
from pathlib import Path

import pytest

from app.cli import main
from router.registry import Registry
from training.dataset import Record, from_records, write_jsonl
from training.routerbench import DEFAULT_ROUTERBENCH_DIR

from .router_test_data import SEED

KEY = "cli-test-key"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("DOKA_SIGNING_KEY", KEY)


def _json(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.mark.skipif(not Path(DEFAULT_ROUTERBENCH_DIR).is_dir(), reason="shared RouterBench data not present")
def test_import_routerbench(tmp_path, capsys):
    assert main(["router", "import-routerbench", "--out", str(tmp_path)]) == 0
    summary = _json(capsys)
    assert summary["train"]["records"] > 2000 and len(summary["test"]["models"]) == 11
    first = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    assert set(first) >= {"id", "prompt", "scores", "costs"} and "mixtral-8x7b-chat" in first["scores"]
    assert set(first["responses"]) == set(first["scores"])  # each model's answer, for eval-cascade
    assert all(isinstance(t, str) and not t.startswith("[") for t in first["responses"].values())


def _cascade_data(tmp_path) -> Path:
    """Ten prompts, answers chosen so each outcome is known: 1-4 the two cheap models agree and the
    weak one is right, 5 they agree on a wrong answer, 6-8 they differ (gpt-4 right, mixtral wrong),
    9-10 they differ as worked answers that state the same result (mixtral right)."""
    recs = []
    for i in range(1, 11):
        if i <= 5:
            w, v = "B", "b."
        elif i <= 8:
            w, v = "A", "C"
        else:
            w, v = "12 + 30 = 42.\n#### 42", "Adding them gives 42. The answer is 42."
        recs.append(Record(id=i, prompt=f"question {i}: A, B or C?",
                           scores={"mixtral": float(i <= 4 or i >= 9), "gpt-4": 1.0, "yi": 1.0},
                           costs={"mixtral": 0.001, "gpt-4": 0.01, "yi": 0.0005},
                           responses={"mixtral": w, "yi": v, "gpt-4": "B"}))
    return write_jsonl(from_records(recs), tmp_path / "answers.jsonl")


def test_eval_cascade_scores_the_gateways_agreement_rule_on_recorded_answers(tmp_path, capsys):
    data = _cascade_data(tmp_path)
    base = ["router", "eval-cascade", "--data", str(data), "--weak", "mixtral", "--verifier", "yi", "--strong", "gpt-4"]
    assert main(base + ["--quiet"]) == 0
    rep = _json(capsys)
    assert (rep["prompts"], rep["escalated_share"]) == (10, 0.5)  # 6-10 differ as whole texts
    assert rep["quality"] == {"weak": 0.6, "strong": 1.0, "cascade": 0.9}  # only prompt 5 is answered wrong
    assert rep["gap_recovered"] == pytest.approx(0.75) and rep["lift_over_random"] == pytest.approx(0.25)
    assert rep["weak_right_when"] == {"agreed": 0.8, "escalated": 0.4}
    # weak + verifier on every prompt, gpt-4 on the five escalated ones
    assert rep["usd_per_1k_prompts"]["cascade"] == pytest.approx(1e3 * (0.0015 + 0.5 * 0.01))
    assert main(base + ["--compare", "final_answer", "--quiet"]) == 0
    worked = _json(capsys)  # 9 and 10 now agree on 42, and mixtral was right there
    assert (worked["escalated_share"], worked["quality"]["cascade"]) == pytest.approx((0.3, 0.9))
    assert worked["gap_recovered"] > 0 and worked["lift_over_random"] == pytest.approx(0.75 - 0.3)
    assert main(base) == 0 and "escalated 50.0%" in capsys.readouterr().err  # the summary line for a terminal


def test_eval_and_eval_cascade_keep_one_task_of_a_mixed_file(tmp_path, capsys):
    rows = [json.loads(line) for line in _cascade_data(tmp_path).read_text().splitlines()]
    for r in rows:  # prompts 1-5 (all agreed) are one benchmark, 6-10 another
        r["task"] = "letters" if int(r["id"]) <= 5 else "mixed"
    data = write_jsonl(rows, tmp_path / "tasks.jsonl")
    base = ["router", "eval-cascade", "--data", str(data), "--weak", "mixtral", "--verifier", "yi", "--strong", "gpt-4",
            "--quiet"]
    assert main(base + ["--task", "letters"]) == 0
    rep = _json(capsys)
    assert (rep["task"], rep["prompts"], rep["escalated_share"]) == ("letters", 5, 0.0)
    assert main(base + ["--task", "nope"]) == 2
    assert "the data has tasks ['letters', 'mixed']" in capsys.readouterr().err
    art = tmp_path / "art"
    assert main(["router", "train", "--family", "logreg", "--data", str(data), "--out", str(art),
                 "--featurizer", "hashing-256", "--holdout", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["router", "eval", "--artifact", str(art), "--data", str(data), "--strong", "gpt-4",
                 "--weak", "mixtral", "--task", "mixed", "--quiet"]) == 0
    assert _json(capsys)["n"] == 5


def test_eval_cascade_compares_a_router_and_names_what_is_missing(tmp_path, capsys):
    data = _cascade_data(tmp_path)
    art = tmp_path / "art"
    assert main(["router", "train", "--family", "logreg", "--data", str(data), "--out", str(art),
                 "--featurizer", "hashing-256", "--holdout", "0", "--quiet"]) == 0
    capsys.readouterr()
    base = ["router", "eval-cascade", "--data", str(data), "--weak", "mixtral", "--strong", "gpt-4", "--quiet"]
    assert main(base + ["--verifier", "yi", "--artifact", str(art)]) == 0
    same = _json(capsys)["router_at_same_strong_share"]
    assert same["family"] == "logreg" and 0.6 <= same["quality"] <= 1.0
    assert main(base + ["--verifier", "claude"]) == 2  # no answers recorded for it
    assert "answers from ['gpt-4', 'mixtral', 'yi']" in capsys.readouterr().err
    assert main(base + ["--verifier", "mixtral"]) == 2
    assert "three different models" in capsys.readouterr().err
    assert main(["router", "eval-cascade", "--data", str(data), "--weak", "mistral", "--verifier", "yi",
                 "--strong", "gpt-4", "--alias", "mixtral=mistral", "--quiet"]) == 0  # a dataset's other spelling
    assert _json(capsys)["escalated_share"] == 0.5


def test_eval_cascade_with_a_gated_artifact_scores_the_cascade_on_the_prompts_it_calls_novel(tmp_path, capsys):
    """What `router.novel_cascade` would do: a gated artifact trained on code and small-talk
    prompts calls those familiar and unrelated ones novel; the cascade's numbers on the novel ones."""
    from tests.router_deployment_support import CHAT, CODE, GPT4, MIXTRAL, train_artifact

    art = train_artifact(tmp_path / "gated", family="gated", key=KEY)
    novel = ["Zur Mitteilung: der Vorstand tagt am Donnerstag im Saal 4, Tagesordnung folgt per Post.",
             "Quel temps fera-t-il demain matin sur la côte bretonne, selon Météo-France?",
             "Invoice 4471: 3 pallets of galvanised M8 bolts, net 30 days, VAT 19% included.",
             "Der Antrag auf Verlängerung der Frist wurde vom Ausschuss einstimmig abgelehnt.",
             "Pursuant to clause 12(b), the lessee shall indemnify the lessor against all claims."]
    rows = []
    for i, prompt in enumerate(CODE + CHAT):  # familiar: the two agree and mixtral is right
        rows.append({"id": f"seen{i}", "prompt": prompt, "scores": {MIXTRAL: 1.0, GPT4: 1.0, "yi": 1.0},
                     "responses": {MIXTRAL: "B", "yi": "B"}})
    for i, prompt in enumerate(novel):  # 1-3 agree with mixtral right; 4-5 differ, mixtral wrong, gpt-4 right
        agree = i < 3
        rows.append({"id": f"novel{i}", "prompt": prompt, "scores": {MIXTRAL: float(agree), GPT4: 1.0, "yi": 1.0},
                     "responses": {MIXTRAL: "B", "yi": "B" if agree else "C"}})
    data = write_jsonl(rows, tmp_path / "with_novel.jsonl")
    base = ["router", "eval-cascade", "--data", str(data), "--weak", MIXTRAL, "--verifier", "yi", "--strong", GPT4]
    assert main(base + ["--artifact", str(art)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["novel_cascade"] == {
        "familiar_share": pytest.approx(20 / 25), "novel_prompts": 5, "escalated_share": pytest.approx(0.4),
        "gap_recovered": pytest.approx(1.0), "quality": {"weak": 0.6, "strong": 1.0, "cascade": 1.0}}
    assert "the artifact calls 20.0% novel (cascade there: escalated 40.0%, gap recovered 100%)" in out.err
    knn = train_artifact(tmp_path / "knn", key=KEY)  # a family without a gate: no such section
    assert main(base + ["--artifact", str(knn), "--quiet"]) == 0
    assert "novel_cascade" not in _json(capsys)


def test_eval_cascade_runs_on_the_in_repo_seed_set(capsys):
    """The seed set keeps RouterBench's recorded answers, so a clone without ../shared can score a
    cascade: on its 199 prompts the verifier agrees often and its agreement tells right from wrong."""
    assert main(["router", "eval-cascade", "--data", str(SEED), "--weak", "mixtral-8x7b-chat", "--verifier",
                 "Yi-34B-Chat", "--strong", "gpt-4-1106-preview", "--quiet"]) == 0
    rep = _json(capsys)
    assert rep["prompts"] == 199 and rep["dropped"] == 0 and 0.1 < rep["escalated_share"] < 0.6
    assert rep["weak_right_when"]["agreed"] > rep["weak_right_when"]["escalated"]
    assert rep["lift_over_random"] > 0


def test_train_eval_publish(tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["router", "train", "--family", "knn", "--data", str(SEED), "--out", str(art),
                 "--param", "n_neighbors=10", "--quiet"]) == 0
    trained = _json(capsys)
    assert trained["metrics"]["holdout"]["n"] == 40 and "aiq" in trained["metrics"]["holdout"]

    png = tmp_path / "pair.png"
    assert main(["router", "eval", "--artifact", str(art), "--data", str(SEED), "--strong", "gpt-4-1106-preview",
                 "--weak", "mixtral-8x7b-chat", "--plot", str(png), "--quiet"]) == 0
    rep = _json(capsys)
    assert rep["mode"] == "two-model" and {"apgr", "cpt50", "cpt80"} <= set(rep["router"])
    assert rep["random"]["apgr"] is not None and png.stat().st_size > 1000

    assert main(["router", "eval", "--artifact", str(art), "--data", str(SEED), "--plot", str(tmp_path / "aiq.png"),
                 "--quiet"]) == 0
    multi = _json(capsys)
    assert multi["mode"] == "multi-model" and len(multi["single_models"]) == 11
    assert multi["oracle"]["aiq"] >= multi["router"]["aiq"] > 0

    reg = tmp_path / "registry"
    assert main(["router", "publish", "--artifact", str(art), "--registry", str(reg)]) == 0
    assert _json(capsys)["latest"] == trained["version"]
    assert main(["router", "eval", "--registry", str(reg), "--data", str(SEED), "--quiet"]) == 0
    assert _json(capsys)["artifact"] == trained["version"]


def test_eval_any_model_names_and_missing_costs(tmp_path, capsys):
    recs = [Record(id=i, prompt=("def sort(xs): return sorted(xs)  # fix" if i % 2 else f"capital of land {i}?"),
                   scores={"alpha": float(i % 2 == 0), "beta": float(i % 2 == 1 or i % 3 == 0)}) for i in range(40)]
    data = write_jsonl(from_records(recs), tmp_path / "custom.jsonl")
    art = tmp_path / "art"
    assert main(["router", "train", "--family", "logreg", "--data", str(data), "--out", str(art),
                 "--featurizer", "hashing-256", "--cost", "alpha=0.001", "--cost", "beta=0.01", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["router", "eval", "--artifact", str(art), "--data", str(data), "--quiet"]) == 2
    assert "no cost known" in capsys.readouterr().err
    assert main(["router", "eval", "--artifact", str(art), "--data", str(data), "--cost", "alpha=0.001",
                 "--cost", "beta=0.01", "--quiet"]) == 0
    rep = _json(capsys)
    assert rep["models"] == ["alpha", "beta"] and rep["router"]["aiq"] > 0
    assert main(["router", "eval", "--artifact", str(art), "--data", str(data), "--strong", "gpt-4", "--weak", "beta"]) == 2
    assert "does not predict 'gpt-4'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "x", "scores": {"a": 1.5}}\n')
    assert main(["router", "eval", "--artifact", str(art), "--data", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_bootstrap_uses_seed_when_shared_data_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DOKA_SIGNING_KEY")
    monkeypatch.setenv("DOKA_SIGNING_KEY_FILE", str(tmp_path / "work" / "signing.key"))
    args = ["router", "bootstrap", "--registry", str(tmp_path / "reg"), "--routerbench", str(tmp_path / "missing"),
            "--work-dir", str(tmp_path / "work"), "--family", "knn", "--quiet"]
    assert main(args) == 0
    first = _json(capsys)
    assert first["action"] == "published" and first["data"] == "in-repo seed set"
    assert (tmp_path / "work" / "signing.key").is_file()
    assert main(args) == 0
    assert _json(capsys) == {"action": "kept", "version": first["version"], "registry": str(tmp_path / "reg")}
    assert Registry(str(tmp_path / "reg")).latest_version() == first["version"]


def test_eval_flags_a_router_whose_scores_are_constant_on_the_data(tmp_path, capsys):
    """A real trained router given prompts it cannot tell apart (one text, many labels) scores them
    all the same: eval says so in the report and on stderr; on varied prompts it does not."""
    art = tmp_path / "art"
    assert main(["router", "train", "--family", "knn", "--data", str(SEED), "--out", str(art),
                 "--param", "n_neighbors=10", "--quiet"]) == 0
    capsys.readouterr()
    same = [Record(id=i, prompt="Summarise this paragraph.", scores={"gpt-4-1106-preview": 1.0, "mixtral-8x7b-chat": float(i % 2)},
                   costs={"gpt-4-1106-preview": 0.01, "mixtral-8x7b-chat": 0.001}) for i in range(30)]
    data = write_jsonl(from_records(same), tmp_path / "same.jsonl")
    pair = ["--strong", "gpt-4-1106-preview", "--weak", "mixtral-8x7b-chat"]
    assert main(["router", "eval", "--artifact", str(art), "--data", str(data), "--bootstrap", "0"] + pair) == 0
    out, err = capsys.readouterr()
    assert "constant on all 30 prompts" in json.loads(out)["constant_scores"] and "warning: scores are constant" in err
    assert main(["router", "eval", "--artifact", str(art), "--data", str(data), "--quiet"]) == 0
    assert "constant" in _json(capsys)["constant_scores"]
    assert main(["router", "eval", "--artifact", str(art), "--data", str(SEED), "--quiet"] + pair) == 0
    assert _json(capsys)["constant_scores"] is None


def test_constant_scores_catches_near_constant_and_passes_varied():
    import numpy as np

    from training.evaluate import constant_scores

    assert constant_scores(np.full(100, 0.3) + 1e-14 * np.arange(100)).startswith("scores are constant")
    assert "95%" in constant_scores(np.r_[np.zeros(95), np.linspace(0.1, 1, 5)])
    assert constant_scores(np.linspace(0, 1, 100)) is None
    assert constant_scores(np.c_[np.zeros(10), np.linspace(0, 1, 10)]) is None


def test_a_model_no_source_prices_trains_without_numpy_warnings(tmp_path):
    """llmrouter's and routerdc's models come without costs: their cost is recorded as unknown
    (None), quietly. The warning this guards against is real: numpy warns on that NaN column."""
    import warnings

    import numpy as np

    from training.train import label_costs

    ds = from_records([Record(id=i, prompt=f"question {i}", scores={"priced": 1.0, "unpriced": float(i % 2)},
                              costs={"priced": 0.01}) for i in range(6)])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        np.nanmean(ds.costs, axis=0)
    assert any(issubclass(w.category, RuntimeWarning) for w in seen)  # the signal exists
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        costs = label_costs(ds, config_path=str(tmp_path / "no-config.yaml"))
    assert costs == {"priced": 0.01, "unpriced": None}
