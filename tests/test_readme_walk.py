"""Walk README.md's code blocks as a new user would, against a keyed gateway this test starts
(issue 31). The README's address (127.0.0.1:8000 / localhost:8000) is swapped for this gateway's;
everything else runs as written: Python blocks in one namespace, in order (later ones use the
`client` of the first), shell blocks with bash, YAML and JSON blocks parsed, and YAML config
fragments validated against the schema. A block that cannot run here is in SKIP with why; a
README block that is neither run nor listed fails the test, so a new example cannot go untested.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import REPO
from tests.keyed_gateway import KeyedGateway, keyed_gateway

MASTER = "sk-doka-dev-master"  # the README's development master key
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# a phrase of the block -> why it does not run here
SKIP = {
    "make run    #": "builds the venv and serves on :8000; this test is that gateway (and `make test` would recurse)",
    "doka router import-routerbench": "imports and trains on all of RouterBench: minutes of CPU; "
                                      "tests/test_training_cli.py runs these commands on small data",
    "--mlflow http://127.0.0.1:5000": "needs an MLflow tracking server of yours on :5000; tests/test_mlflow.py "
                                      "starts one and runs train and eval with --mlflow against it",
    "doka router calibrate --registry": "needs a traffic.jsonl of your own; tests/test_calibrate_ties.py and "
                                        "tests/test_training_generalization.py run calibrate",
    "doka router eval-cascade --data .doka/data/routerbench": "needs the imported RouterBench test split (minutes)",
    "doka router train --family gated": "trains gated on all of RouterBench (minutes of CPU)",
    "client --HTTP--> Ingress": "a diagram, not a command",
    "locust -f load/locustfile.py": "a 20 s load run; tests/test_load_locust.py runs the same locustfile",
    'messages=[...])': "an illustration of the cascade headers (`[...]`), not a complete call",
    "kubectl": "needs a Kubernetes cluster",
    'claude -p "': "the Claude Code CLI (npm) with your key in place of `<doka key>`; "
                   "tests/test_agents_gateway.py runs that same CLI against a gateway",
    'codex exec "': "the Codex CLI (npm) with your key in place of `<doka key>`, and it appends to your "
                    "~/.codex/config.toml; tests/test_agents_gateway.py runs that same CLI against a gateway",
    "x-doka-route-reason: auto:weighted_round_robin;filtered=": "response headers shown, not a command; "
                                                              "tests/test_agents_gateway.py asserts them",
}


def _with_demo_model(raw: dict) -> None:
    """The default config's demo vLLM model, its weights not built (a fresh clone without
    `doka models make-tiny`): left out at start, asked by name it falls back along `local-demo`."""
    raw["model_list"].insert(0, {"model_name": "local-tiny", "provider": "vllm",
                                 "model_info": {"tier": "local", "timeout": 3, "parallel": True},
                                 "vllm": {"model_source": "/nonexistent/tiny-llama",
                                          "placement_group_config": {"bundles": [{"CPU": 1}]}}})
    raw["fallbacks"]["local-demo"] = ["local-tiny", "mock-ollama", "mock-gpt-4"]


def _blocks() -> list[tuple[int, str, str]]:
    text = (REPO / "README.md").read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def _skip_reason(body: str) -> str | None:
    return next((why for phrase, why in SKIP.items() if phrase in body), None)


@pytest.fixture(scope="module")
def readme_gw(ray_cluster, mock_upstream, tmp_path_factory) -> Iterator[KeyedGateway]:
    yield from keyed_gateway(mock_upstream, tmp_path_factory.mktemp("readme"), app="doka-readme",
                             prefix="/readme", master=MASTER, edit=_with_demo_model)


def _local(body: str, url: str) -> str:
    return body.replace("http://127.0.0.1:8000", url).replace("localhost:8000", url.split("://", 1)[1])


def test_every_readme_block_runs_or_says_why_not(readme_gw: KeyedGateway, tmp_path: Path):
    from app.config import parse_config

    env = {**os.environ, "DOKA_MASTER_KEY": MASTER, "DOKA_URL": readme_gw.url, "VENV": str(Path(sys.prefix)),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    namespace: dict = {}
    ran, skipped = [], []
    for line, lang, body in _blocks():
        why = _skip_reason(body)
        if why:
            skipped.append((line, why))
            continue
        where = f"README.md:{line}"
        if lang == "python":
            exec(compile(_local(body, readme_gw.url), where, "exec"), namespace)  # noqa: S102 - the README's own code
        elif lang == "bash":
            out = subprocess.run(["bash", "-e", "-c", _local(body, readme_gw.url)], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, (where, out.stdout[-2000:], out.stderr[-2000:])
            # curl -s exits 0 on HTTP errors: no error object in what came back
            assert not re.search(r'"error":\s*\{', out.stdout), (where, out.stdout[-2000:])
        elif lang == "yaml":
            doc = yaml.safe_load(body)
            if isinstance(doc, list):  # a model_list fragment
                parse_config({"model_list": doc})
            elif isinstance(doc, dict) and "model_list" not in doc:  # a section fragment (router:, cascades:)
                base = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
                parse_config({**base, **{k: {**(base.get(k) or {}), **v} for k, v in doc.items()}})
        elif lang == "json":
            for row in body.strip().splitlines():
                json.loads(row)
        else:
            pytest.fail(f"{where}: a ```{lang or 'plain'}``` block neither run nor in SKIP: {body[:80]!r}")
        ran.append(line)
    assert len(ran) >= 8, (ran, skipped)  # the API examples, curl, keys, PATH/env did run
    print("README blocks run:", ran, "skipped:", skipped)
