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
