"""`doka config check` and the graph builder's entry points (no Ray cluster needed)."""

from __future__ import annotations

import subprocess
import sys

import yaml

from app.config import DEFAULT_CONFIG_PATH
from app.graph import app_builder
from app.run_cli import local_mock_ports
from tests.conftest import REPO, gateway_test_config


def _doka(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_config_check_ok_on_default():
    r = _doka("config", "check", str(DEFAULT_CONFIG_PATH))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "default: mock-mixtral -> mock-gpt-4" in r.stdout
    assert "local-demo: local-tiny -> mock-ollama -> mock-gpt-4" in r.stdout
    assert "verified: mock-mixtral + mock-gpt-3.5 -> mock-gpt-4" in r.stdout


def test_the_demo_model_is_never_auto_or_a_default_tier():
    """`local-tiny` has random weights: `auto` and `default` must never pick it by accident (issue 31)."""
    from app.config import load_config

    cfg = load_config(DEFAULT_CONFIG_PATH)
    tiny = cfg.model("local-tiny")
    assert tiny is not None and tiny.model_info.parallel and not tiny.model_info.route_label
    assert "local-tiny" not in cfg.auto_candidates() and "local-tiny" not in cfg.chain_for("default")
    assert cfg.chain_for("local-tiny") == ["local-tiny", "mock-ollama", "mock-gpt-4"]


def test_a_cascade_names_three_different_chat_models_and_no_taken_name():
    import pytest

    from app.config import ConfigError, parse_config

    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert parse_config(raw).chain_for("verified") == ["mock-gpt-4"]  # escalation: the strong model's chain
    assert parse_config(raw).cascades["verified"].compare == "text"  # the whole answer unless asked otherwise
    ok = {"weak": "mock-mixtral", "verifier": "mock-gpt-3.5", "strong": "mock-gpt-4"}
    for cascades, says in (
        ({"x": {**ok, "verifier": "mock-mixtral"}}, "three different models"),
        ({"x": {**ok, "weak": "mock-embed"}}, "weak 'mock-embed' is not a chat model"),
        ({"x": {**ok, "strong": "nope"}}, "strong 'nope' is not a chat model"),
        ({"default": ok}, "cascade 'default' clashes"),
        ({"auto": ok}, "cascade 'auto' clashes"),
        ({"x": {**ok, "extra": 1}}, "cascades.x.extra"),
        ({"x": {**ok, "compare": "embedding"}}, "cascades.x.compare"),
    ):
        with pytest.raises(ConfigError, match=says):
            parse_config({**raw, "cascades": cascades})


def test_router_novel_cascade_names_a_cascade(tmp_path):
    import pytest

    from app.config import ConfigError, parse_config

    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert parse_config(raw).router.novel_cascade is None  # off unless asked for
    raw["router"]["novel_cascade"] = "verified"
    assert parse_config(raw).router.novel_cascade == "verified"
    path = tmp_path / "novel.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = _doka("config", "check", str(path))
    assert r.returncode == 0 and "novel prompts: verified" in r.stdout, r.stderr
    for name in ("mock-mixtral", "nope"):  # a model is not a cascade
        with pytest.raises(ConfigError, match=f"router.novel_cascade '{name}' is not a cascade; cascades: verified"):
            parse_config({**raw, "router": {**raw["router"], "novel_cascade": name}})


def test_config_check_names_the_bad_field(tmp_path):
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw["model_list"][1]["model_info"]["timeout"] = -1
    raw["fallbacks"]["default"].append("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r = _doka("config", "check", str(bad))
    assert r.returncode == 2
    assert "model_list.1.model_info.timeout" in r.stderr


def test_config_check_missing_file(tmp_path):
    r = _doka("config", "check", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_app_builder_accepts_inline_config_and_path(tmp_path):
    raw = gateway_test_config(9999, 8888)
    inline = app_builder({"config": raw})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    from_file = app_builder({"config_path": str(path)})
    for application in (inline, from_file):
        assert type(application).__name__ == "Application"


def test_run_detects_local_upstream_ports():
    from app.config import parse_config

    assert local_mock_ports(parse_config(gateway_test_config(9311, 8000))) == [9311]
