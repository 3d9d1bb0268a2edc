"""MLflow, as LiteLLM users get it, against a real MLflow tracking server started here on 127.0.0.1:
gateway requests as MLflow traces (the real Serve app, the mock upstream, the unmodified OpenAI SDK),
and `doka router train|eval --mlflow URI` as MLflow runs with params, metrics and artifacts.

Skipped (saying why) when `mlflow` is not installed; the `test` extra installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[test]' brings the tracking server)")

from mlflow.tracking import MlflowClient  # noqa: E402

from app.cli import main  # noqa: E402
from app.config import ObservabilityConfig  # noqa: E402
from load.isolation import free_port  # noqa: E402
from observability.mlflow_sink import MlflowSink  # noqa: E402
from observability.trace_store import TraceRecord  # noqa: E402
from tests.keyed_gateway import keyed_gateway  # noqa: E402

from .router_test_data import SEED  # noqa: E402

MASTER = "sk-mlflow-test-master"
APP, PREFIX = "doka-mlflow", "/mlflow"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on a free 127.0.0.1 port, SQLite store and served artifacts in a temp dir."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"mlflow server not up in 180 s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait(fn, timeout: float = 60.0):
    deadline = time.time() + timeout
    while True:
        out = fn()
        if out or time.time() > deadline:
            return out
        time.sleep(0.5)


def _trace(client: MlflowClient, experiment: str, request_id: str, timeout: float = 60.0):
    def find():
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        found = client.search_traces(locations=[exp.experiment_id],
                                     filter_string=f"tag.`doka.request_id` = '{request_id}'")
        return found[0] if found else None

    return _wait(find, timeout)


# -- the sink on its own ------------------------------------------------------------------------

def _record(request_id: str, **kw) -> TraceRecord:
    base = dict(request_id=request_id, requested_model="auto", model="mock-gpt-4", route_reason="auto:learned",
                route_strategy="learned", attempts=["mock-gpt-4"], latency_ms=42.0, prompt_tokens=11,
                completion_tokens=7, cost=0.00042, key_id="k1", status_code=200)
    return TraceRecord(**{**base, **kw})


@pytest.mark.parametrize("store,redact", [(True, False), (True, True), (False, False)])
def test_sink_sends_a_trace_and_treats_prompts_like_langfuse(mlflow_server, monkeypatch, store, redact):
    monkeypatch.setenv("DOKA_TEST_MLFLOW_URI", mlflow_server)  # os.environ/ references resolve
    exp = f"sink-{uuid.uuid4().hex[:6]}"
    cfg = ObservabilityConfig(store_prompts=store, redact_prompts=redact,
                              mlflow={"tracking_uri": "os.environ/DOKA_TEST_MLFLOW_URI", "experiment": exp})
    sink = MlflowSink.from_config(cfg)
    assert sink is not None and sink.tracking_uri == mlflow_server
    rid = f"sink-{uuid.uuid4().hex}"
    started = time.perf_counter()
    sink.send(_record(rid, status_code=502, error="every tier failed"), prompt="secret prompt", output="the answer")
    assert time.perf_counter() - started < 0.05  # the request path only queues
    sink.score(rid, 0.25, "meh")
    sink.flush()
    trace = _trace(MlflowClient(mlflow_server), exp, rid)
    assert trace is not None, sink.stats()
    span = trace.data.spans[0]
    assert span.name == "doka.chat" and span.span_type == "LLM"
    assert str(trace.info.state).endswith("ERROR")  # status >= 400
    assert span.attributes["doka.status_code"] == 502 and span.attributes["doka.error"] == "every tier failed"
    if not store:
        assert span.inputs is None and span.outputs is None
    elif redact:
        assert span.inputs["prompt"].startswith("[redacted sha256:") and "secret" not in json.dumps(span.inputs)
        assert span.outputs["output"].startswith("[redacted sha256:")
    else:
        assert span.inputs == {"prompt": "secret prompt"} and span.outputs == {"output": "the answer"}
    fb = _wait(lambda: [a for a in MlflowClient(mlflow_server).get_trace(trace.info.trace_id).info.assessments
                        if a.name == "feedback"], 30)
    assert fb and fb[0].value == 0.25 and fb[0].rationale == "meh"
    sink.shutdown()


def test_sink_off_by_default_and_never_raises_on_a_dead_server(monkeypatch):
    assert MlflowSink.from_config(ObservabilityConfig()) is None
    assert MlflowSink.from_config(ObservabilityConfig(mlflow={"tracking_uri": "os.environ/DOKA_UNSET_MLFLOW"})) is None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    sink = MlflowSink(ObservabilityConfig(mlflow={"tracking_uri": f"http://127.0.0.1:{free_port()}"}))
    for i in range(3):
        sink.send(_record(f"dead-{i}"), prompt="p", output="o")
    assert _wait(lambda: sink.failed >= 1, 30), sink.stats()
    assert sink.sent == 0
    sink.shutdown(flush_timeout_s=0)


# -- the gateway ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, mlflow_server, tmp_path_factory):
    exp = f"gateway-{uuid.uuid4().hex[:6]}"

    def edit(raw):
        raw.setdefault("observability", {})["mlflow"] = {"tracking_uri": mlflow_server, "experiment": exp}

    for g in keyed_gateway(mock_upstream, tmp_path_factory.mktemp("mlgw"), app=APP, prefix=PREFIX, master=MASTER,
                           edit=edit):
        g.experiment = exp  # type: ignore[attr-defined]
        yield g


def test_gateway_requests_become_mlflow_traces(gw, mlflow_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{gw.url}/v1", api_key=MASTER, max_retries=0)
    tag = uuid.uuid4().hex[:8]
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": f"trace me {tag}"}])
    reply = raw.parse()
    rid, answered = raw.headers["x-doka-request-id"], raw.headers["x-doka-model"]
    with client.chat.completions.with_streaming_response.create(
            model="mock-gpt-4", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": f"stream me {tag}"}]) as s:
        srid = s.headers["x-doka-request-id"]
        assert "".join((c.choices[0].delta.content or "") for c in s.parse() if c.choices)

    mc = MlflowClient(mlflow_server)
    trace = _trace(mc, gw.experiment, rid, 90)
    assert trace is not None, "the gateway's request never reached MLflow"
    span = trace.data.spans[0]
    a = span.attributes
    assert a["doka.requested_model"] == "auto" and a["gen_ai.request.model"] == "auto"
    assert a["doka.model"] == answered == reply.model and a["gen_ai.response.model"] == answered
    assert a["doka.route_reason"] and a["doka.route_strategy"] == "weighted_round_robin"
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert a["mlflow.chat.tokenUsage"]["total_tokens"] == reply.usage.total_tokens
    assert a["doka.cost_usd"] > 0 and a["mlflow.llm.cost"]["total_cost"] == a["doka.cost_usd"]
    assert a["doka.status_code"] == 200 and a["doka.latency_ms"] > 0 and a["doka.key_id"]
    assert str(trace.info.state).endswith("OK") and trace.info.execution_duration >= 0
    assert span.inputs == {"prompt": f"trace me {tag}"}  # store_prompts is on, redaction off
    assert span.outputs == {"output": reply.choices[0].message.content}
    assert trace.info.tags["doka.model"] == answered and trace.info.tags["doka.status"] == "200"

    strace = _trace(mc, gw.experiment, srid, 60)
    assert strace is not None
    sa = strace.data.spans[0].attributes
    assert sa["doka.stream"] is True and sa["doka.model"] == "mock-gpt-4" and sa["doka.ttft_ms"] > 0
    assert sa["gen_ai.usage.output_tokens"] > 0

    fb = httpx.post(f"{gw.url}/v1/feedback", headers={"Authorization": f"Bearer {MASTER}"}, timeout=30,
                    json={"request_id": rid, "score": 0.9, "comment": "good"})
    assert fb.status_code == 200, fb.text
    got = _wait(lambda: [x for x in mc.get_trace(trace.info.trace_id).info.assessments if x.name == "feedback"], 60)
    assert got and got[0].value == 0.9


# -- training and evaluation runs -------------------------------------------------------------

def test_train_and_eval_are_logged_as_mlflow_runs(mlflow_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOKA_SIGNING_KEY", "mlflow-test-key")
    exp = f"router-{uuid.uuid4().hex[:6]}"
    art = tmp_path / "art"
    assert main(["router", "train", "--family", "logreg", "--data", str(SEED), "--out", str(art),
                 "--featurizer", "hashing-256", "--param", "C=0.5", "--quiet",
                 "--mlflow", mlflow_server, "--mlflow-experiment", exp]) == 0
    trained = json.loads(capsys.readouterr().out)
    run_id = trained["mlflow"]["run_id"]
    mc = MlflowClient(mlflow_server)
    run = mc.get_run(run_id)
    meta = json.loads((art / "metadata.json").read_text())
    p, m = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED" and run.info.experiment_id == trained["mlflow"]["experiment_id"]
    assert p["family"] == "logreg" and p["featurizer"] == "hashing-256" and p["hp.C"] == "0.5"
    assert p["data_sha256"] == meta["training_data"]["sha256"] and int(p["data_rows"]) == meta["training_data"]["records"]
    assert p["version"] == trained["version"] and float(p["holdout"]) == 0.2
    assert m["holdout.aiq"] == pytest.approx(meta["metrics"]["holdout"]["aiq"]) and "holdout.mse" in m
    assert "train_seconds" in m
    files = {f.path for f in mc.list_artifacts(run_id, "artifact")}
    assert {"artifact/metadata.json", "artifact/signature.json"} <= files
    local = mc.download_artifacts(run_id, "artifact/metadata.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["version"] == trained["version"]

    png = tmp_path / "pair.png"
    assert main(["router", "eval", "--artifact", str(art), "--data", str(SEED), "--strong", "gpt-4-1106-preview",
                 "--weak", "mixtral-8x7b-chat", "--bootstrap", "20", "--plot", str(png), "--quiet",
                 "--mlflow", mlflow_server, "--mlflow-experiment", exp]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout stays one JSON object (MLflow's run URL goes to stderr)
    erun = mc.get_run(report["mlflow"]["run_id"])
    ep, em = erun.data.params, erun.data.metrics
    assert ep["artifact"] == trained["version"] and ep["mode"] == "two-model" and ep["strong"] == "gpt-4-1106-preview"
    assert ep["data_sha256"] == report["data_sha256"] and ep["bootstrap"] == "20"
    assert em["router.apgr"] == pytest.approx(report["router"]["apgr"])
    assert em["router.cpt50"] == pytest.approx(report["router"]["cpt50"]) and "router.cpt80" in em
    assert em["router.apgr_se"] == pytest.approx(report["router"]["apgr_se"]) and "random.apgr" in em
    top = {f.path for f in mc.list_artifacts(erun.info.run_id)}
    assert {"report.json", "pair.png", "artifact"} <= top

    assert main(["router", "eval", "--artifact", str(art), "--data", str(SEED), "--bootstrap", "0", "--quiet",
                 "--mlflow", mlflow_server, "--mlflow-experiment", exp]) == 0  # multi-model: AIQ
    multi = json.loads(capsys.readouterr().out)
    assert mc.get_run(multi["mlflow"]["run_id"]).data.metrics["router.aiq"] == pytest.approx(multi["router"]["aiq"])


def test_a_dead_tracking_server_keeps_the_artifact_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOKA_SIGNING_KEY", "mlflow-test-key")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    art = tmp_path / "art"
    assert main(["router", "train", "--family", "logreg", "--data", str(SEED), "--out", str(art),
                 "--featurizer", "hashing-256", "--holdout", "0", "--quiet",
                 "--mlflow", f"http://127.0.0.1:{free_port()}"]) == 1
    out = capsys.readouterr()
    assert "error" in json.loads(out.out)["mlflow"] and "could not log the MLflow run" in out.err
    assert (art / "metadata.json").is_file()
