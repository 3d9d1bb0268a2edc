"""The observability pieces on their own: OTLP export, Langfuse payload, metrics, trace store."""

from __future__ import annotations

import json
import time

import pytest

from app.config import ObservabilityConfig
from observability.feedback import FeedbackStore, load_joined, parse_feedback
from observability.metrics import GatewayMetrics
from observability.trace_store import TraceRecord, TraceStore, prompt_for_store, read_records
from observability.tracing import Tracing, resolve_endpoint
from router.decision import RouteDecision
from tests.observability_receiver import Receiver


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_spans_reach_otlp_receiver_with_routing_and_fallbacks(receiver, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    cfg = ObservabilityConfig(otlp_endpoint=receiver.url, service_name="doka-test")
    assert resolve_endpoint(cfg) == receiver.url + "/v1/traces"
    tracing = Tracing(cfg)
    decision = RouteDecision("local-tiny", "learned", 0.71, "quality", "v3",
                             familiar=False,  # a gated artifact's novelty gate: this prompt took difficulty's path
                             cascade="verified")  # and `router.novel_cascade` sent it through that cascade
    with tracing.request("req-1", "auto", stream=True, key_id="key-a") as req:
        with req.routing(["local-tiny", "mock-gpt-4"]) as routing:
            routing.decided(decision)
        with pytest.raises(TimeoutError):
            with req.attempt("local-tiny", system="vllm"):
                raise TimeoutError("tier timeout")
        with req.attempt("mock-gpt-4", upstream_model="openai/gpt-4-turbo") as attempt:
            final = {
                "id": "chatcmpl-1",
                "model": "gpt-4-turbo",
                "usage": {"prompt_tokens": 12, "completion_tokens": 5},
                "choices": [{"index": 0, "finish_reason": "stop"}],
            }
            with req.streaming("mock-gpt-4"):
                pass
            attempt.succeeded(final)
        req.finish("mock-gpt-4", final)
    assert tracing.flush()
    spans = receiver.spans()
    by_name = {s["name"]: s for s in spans}
    root = by_name["doka.request"]
    assert root["attributes"]["llm.routing.selected_model"] == "local-tiny"
    assert root["attributes"]["router.strategy"] == "learned"
    assert root["attributes"]["router.score"] == pytest.approx(0.71)
    assert root["attributes"]["router.familiar"] is False and by_name["doka.route"]["attributes"]["router.familiar"] is False
    assert root["attributes"]["router.cascade"] == by_name["doka.route"]["attributes"]["router.cascade"] == "verified"
    assert root["attributes"]["gen_ai.request.model"] == "auto"
    assert root["attributes"]["gen_ai.response.model"] == "gpt-4-turbo"
    assert root["attributes"]["gen_ai.usage.input_tokens"] == 12
    assert root["attributes"]["gen_ai.usage.output_tokens"] == 5
    assert root["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    route = by_name["doka.route"]
    assert route["parent_span_id"] == root["span_id"]
    assert route["attributes"]["llm.routing.latency_ms"] >= 0
    assert route["attributes"]["llm.routing.candidates"] == ["local-tiny", "mock-gpt-4"]
    first, second = by_name["chat local-tiny"], by_name["chat mock-gpt-4"]
    assert first["attributes"]["doka.attempt.index"] == 0 and first["attributes"]["doka.attempt.outcome"] == "error"
    assert first["status"] == 2  # STATUS_CODE_ERROR
    assert first["attributes"]["error.type"] == "TimeoutError"
    assert second["attributes"]["doka.attempt.fallback"] is True
    assert second["attributes"]["gen_ai.request.model"] == "mock-gpt-4"
    assert second["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert by_name["doka.stream"]["parent_span_id"] == root["span_id"]
    assert {s["trace_id"] for s in spans} == {root["trace_id"]}
    tracing.shutdown()


def test_env_endpoint_is_used_when_config_has_none(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert resolve_endpoint(ObservabilityConfig()) == "http://collector:4318/v1/traces"
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert resolve_endpoint(ObservabilityConfig()) is None


def _langfuse_env(monkeypatch, url):
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
    monkeypatch.setenv("LANGFUSE_HOST", url)
    monkeypatch.delenv("LANGFUSE_BASE_URL", raising=False)
    monkeypatch.setenv("LANGFUSE_OTEL_COMPRESSION", "none")


@pytest.mark.parametrize("redact", [False, True])
def test_langfuse_payload_reaches_local_server(receiver, monkeypatch, redact):
    from observability.langfuse_sink import LangfuseSink

    _langfuse_env(monkeypatch, receiver.url)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", f"pk-lf-test-{redact}")  # the SDK keeps one client per key
    sink = LangfuseSink.from_env(ObservabilityConfig(redact_prompts=redact))
    assert sink is not None
    record = TraceRecord(
        request_id=f"req-lf-{redact}",
        requested_model="auto",
        model="mock-gpt-4",
        route_strategy="learned",
        route_reason="quality 0.9 vs cost",
        prompt_tokens=11,
        completion_tokens=7,
        cost=0.00042,
        latency_ms=123.0,
        key_id="key-team-a",
    )
    sink.send(record, prompt="my secret prompt about tax", output="the answer")
    sink.flush()
    spans = receiver.spans("/api/public/otel/v1/traces")
    assert spans, receiver.paths()
    gen = next(s for s in spans if s["name"] == "doka.chat")
    attrs = gen["attributes"]
    blob = json.dumps(attrs)
    assert attrs["langfuse.observation.type"] == "generation"
    assert attrs["langfuse.observation.model.name"] == "mock-gpt-4"
    assert json.loads(attrs["langfuse.observation.usage_details"]) == {"input": 11, "output": 7}
    assert json.loads(attrs["langfuse.observation.cost_details"]) == {"total": 0.00042}
    assert "quality 0.9 vs cost" in blob and "key-team-a" in blob
    assert gen["trace_id"] == sink.trace_id("req-lf-" + str(redact))
    if redact:
        assert "secret prompt" not in blob and "[redacted sha256:" in blob
    else:
        assert "my secret prompt about tax" in blob
    sink.shutdown()


def test_langfuse_disabled_without_env(monkeypatch):
    from observability.langfuse_sink import LangfuseSink

    for k in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST", "LANGFUSE_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    assert LangfuseSink.from_env(ObservabilityConfig()) is None


def test_metrics_exposition_has_the_counters():
    m = GatewayMetrics(model_names=["local-tiny", "mock-gpt-4"], max_keys=2, mirror_to_ray=False)
    m.routed(RouteDecision("local-tiny", "learned", None, "", "v1", degraded=False), 0.002)
    for familiar in (True, False, False):  # a gated artifact's decisions
        m.routed(RouteDecision("local-tiny", "learned", None, "", "v1", familiar=familiar), 0.001)
    m.attempt("local-tiny", ok=False)
    m.fallback("local-tiny", "mock-gpt-4")
    m.attempt("mock-gpt-4", ok=True)
    m.request_done("mock-gpt-4", "key-a", 200, 0.4, prompt_tokens=10, completion_tokens=4, cost=0.001)
    m.request_done("mock-gpt-4", "key-b", 502, 0.1, error="upstream_error")
    m.request_done("made-up-model", "key-c", 200, 0.1)  # unknown model and a 3rd key fold into `other`
    m.routed(RouteDecision("mock-gpt-4", "weighted_round_robin", None, "", "v2", degraded=True), 0.001)
    body, ctype = m.exposition()
    text = body.decode()
    assert ctype.startswith("text/plain")
    assert 'doka_requests_total{model="mock-gpt-4",status="ok"} 1.0' in text
    assert 'doka_requests_total{model="other",status="ok"} 1.0' in text
    assert 'doka_request_errors_total{error="upstream_error",model="mock-gpt-4"} 1.0' in text
    assert 'doka_tokens_total{direction="input",model="mock-gpt-4"} 10.0' in text
    assert 'doka_cost_usd_total{model="mock-gpt-4"} 0.001' in text
    assert "key-a" not in text and "doka_key_" not in text  # tenant series: not in the anonymous page
    tenant = m.exposition(tenant=True)[0].decode()
    assert 'doka_key_requests_total{key="key-a",model="mock-gpt-4",status="ok"} 1.0' in tenant
    assert 'doka_key_requests_total{key="other",model="other",status="ok"} 1.0' in tenant
    assert 'doka_key_tokens_total{direction="input",key="key-a",model="mock-gpt-4"} 10.0' in tenant
    assert 'doka_key_cost_usd_total{key="key-a",model="mock-gpt-4"} 0.001' in tenant
    assert 'doka_routing_decisions_total{model="local-tiny",strategy="learned"} 4.0' in text
    assert 'doka_routing_gate_total{path="familiar"} 1.0' in text and 'doka_routing_gate_total{path="novel"} 2.0' in text
    assert 'doka_fallbacks_total{from_model="local-tiny",to_model="mock-gpt-4"} 1.0' in text
    assert 'doka_upstream_attempts_total{model="local-tiny",outcome="error"} 1.0' in text
    assert "doka_request_latency_seconds_bucket" in text
    assert "doka_router_degraded 1.0" in text
    assert 'doka_router_artifact_info{version="v2"} 1.0' in text
    assert 'doka_router_artifact_info{version="v1"} 0.0' in text


def test_prompt_policy():
    assert prompt_for_store("hello", ObservabilityConfig()) == "hello"
    assert prompt_for_store("hello", ObservabilityConfig(store_prompts=False)) is None
    redacted = prompt_for_store("hello", ObservabilityConfig(redact_prompts=True))
    assert redacted.startswith("[redacted sha256:") and "hello" not in redacted


def test_trace_store_round_trips_through_ray_data(tmp_path):
    import ray

    store = TraceStore(str(tmp_path / "traces"), flush_interval_s=60)
    for i in range(5):
        store.append(
            TraceRecord(
                request_id=f"r{i}",
                requested_model="auto",
                model="mock-gpt-4" if i % 2 else "local-tiny",
                candidates=["local-tiny", "mock-gpt-4"],
                route_score=0.5 if i else None,
                latency_ms=10.0 * i,
                prompt=f"prompt {i}",
                prompt_tokens=3,
            )
        )
    assert store.flush() == 5
    store.append(TraceRecord(request_id="r5", requested_model="mock-gpt-4", model="mock-gpt-4", status_code=502))
    store.close()
    feedback = FeedbackStore(str(tmp_path / "traces"))
    assert isinstance(parse_feedback({"request_id": "r1", "score": 1.5}), dict)  # out of range -> error body
    feedback.add(parse_feedback({"request_id": "r1", "score": 0.2}))
    feedback.add(parse_feedback({"request_id": "r1", "score": 0.4, "comment": "meh"}))
    feedback.close()

    started = not ray.is_initialized()  # reuse the session's test cluster when one is up
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.read_json(str(tmp_path / "traces" / "requests"))
        rows = sorted(ds.take_all(), key=lambda r: r["request_id"])
    finally:
        if started:
            ray.shutdown()
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(6)]
    assert rows[3]["model"] == "mock-gpt-4" and list(rows[3]["candidates"]) == ["local-tiny", "mock-gpt-4"]
    assert rows[5]["status_code"] == 502
    joined = load_joined(str(tmp_path / "traces"))
    assert len(joined) == 1 and joined[0]["request_id"] == "r1"
    assert joined[0]["feedback_score"] == pytest.approx(0.3) and joined[0]["feedback_count"] == 2
    assert len(read_records(str(tmp_path / "traces" / "requests"))) == 6


def test_trace_store_writes_in_background(tmp_path):
    store = TraceStore(str(tmp_path / "t"), flush_interval_s=0.05)
    store.append(TraceRecord(request_id="bg", requested_model="auto"))
    deadline = time.time() + 10
    while time.time() < deadline and not read_records(store.requests_url):
        time.sleep(0.05)
    assert [r["request_id"] for r in read_records(store.requests_url)] == ["bg"]
    store.close()


def test_gateway_facade_feeds_every_sink(tmp_path, receiver, monkeypatch):
    from app.config import parse_config
    from observability.gateway import Observability

    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    cfg = parse_config(
        {
            "server": {"data_dir": str(tmp_path)},
            "model_list": [
                {"model_name": "a", "litellm_params": {"model": "openai/a"},
                 "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
                {"model_name": "b", "litellm_params": {"model": "openai/b"}},
            ],
            "router": {"strategy": "learned"},
            "observability": {"otlp_endpoint": receiver.url},
        }
    )
    obs = Observability(cfg, mirror_to_ray=False)
    req = obs.start("rid-1", "auto", {"messages": [{"role": "user", "content": "hi there"}]}, key_id="k1")
    with req.routing(["a", "b"]) as r:
        r.decided(RouteDecision("b", "weighted_round_robin", None, "rr"))
    with pytest.raises(RuntimeError):
        with req.attempt("b"):
            raise RuntimeError("b is down")
    with req.attempt("a"):
        pass
    resp = {"model": "a", "usage": {"prompt_tokens": 100, "completion_tokens": 10},
            "choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}]}
    rec = req.finish("a", resp)
    assert rec.cost == pytest.approx(100e-6 + 20e-6)
    assert rec.attempts == ["b", "a"] and rec.route_reason == "rr" and rec.prompt == "hi there"
    assert obs.add_feedback({"request_id": "rid-1", "score": 0.9})[0] == 200
    status, body = obs.add_feedback({"request_id": "rid-1", "score": "great"})
    assert status == 400 and body["error"]["param"] == "score"
    obs.close()
    text = obs.metrics_body()[0].decode()
    assert 'doka_fallbacks_total{from_model="b",to_model="a"} 1.0' in text
    assert "doka_router_degraded 1.0" in text  # learned configured, round robin answered
    joined = load_joined(str(tmp_path / "traces"))
    assert joined[0]["model"] == "a" and joined[0]["feedback_score"] == 0.9
    names = [s["name"] for s in receiver.spans()]
    assert {"doka.request", "doka.route", "chat a", "chat b"} <= set(names)


class _Backend:
    """A stand-in upstream: `down` models fail, others answer (and stream two chunks)."""

    def __init__(self, down: set[str]) -> None:
        self.down = down

    async def chat(self, model, body, timeout):
        if model in self.down:
            raise ConnectionError(f"{model} is down")
        return {"model": model, "usage": {"prompt_tokens": 4, "completion_tokens": 2},
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}

    async def chat_stream(self, model, body, timeout):
        if model in self.down:
            raise ConnectionError(f"{model} is down")
        yield {"model": model, "choices": [{"delta": {"content": "o"}}]}
        yield {"model": model, "choices": [{"delta": {}, "finish_reason": "length"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


async def test_observed_backends_record_attempts_and_streams(tmp_path, receiver, monkeypatch):
    from app.config import parse_config
    from observability.gateway import Observability

    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    cfg = parse_config({"server": {"data_dir": str(tmp_path)},
                        "model_list": [{"model_name": "a", "litellm_params": {"model": "openai/a"}},
                                       {"model_name": "b", "litellm_params": {"model": "openai/b"}}],
                        "observability": {"otlp_endpoint": receiver.url}})
    obs = Observability(cfg, mirror_to_ray=False)
    shared = _Backend(down={"a"})
    backends = obs.wrap_backends({"a": shared, "b": shared})
    assert backends["a"] is backends["b"]

    obs.start("s1", "a", {"messages": [{"role": "user", "content": "stream me"}]}, stream=True)
    with pytest.raises(ConnectionError):
        async for _ in backends["a"].chat_stream("a", {}, 1):
            pass
    chunks = [c async for c in backends["b"].chat_stream("b", {}, 1)]
    assert len(chunks) == 2
    rec = obs.finish("s1", "b", route_reason="fallback:tier2")
    assert rec.attempts == ["a", "b"] and rec.ttft_ms is not None and rec.completion_tokens == 1
    assert obs.finish("s1", "b") is None  # already closed
    obs.close()
    spans = {s["name"]: s for s in receiver.spans()}
    assert spans["doka.request"]["attributes"]["gen_ai.response.finish_reasons"] == ["length"]
    assert spans["chat a"]["attributes"]["doka.attempt.outcome"] == "error"
    assert spans["chat b"]["attributes"]["doka.attempt.fallback"] is True
    assert "doka.stream" in spans
    assert 'doka_fallbacks_total{from_model="a",to_model="b"} 1.0' in obs.metrics_body()[0].decode()


def test_no_exporter_creates_no_spans(receiver, monkeypatch):
    """Without a collector the tracer is a no-op (no span objects kept, nothing exported); the
    same calls against a configured collector do produce spans, so the test can see them."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)

    def one(tracing: Tracing) -> bool:
        with tracing.request("req-x", "auto") as req:
            with req.routing(["m"]) as routing:
                routing.decided(RouteDecision("m", "learned", None, ""))
            with req.attempt("m") as attempt:
                attempt.succeeded({"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
            req.finish("m", {"model": "m"})
            return req.span.is_recording()

    off = Tracing(ObservabilityConfig())
    assert off.enabled is False and off.provider is None
    assert one(off) is False
    assert off.flush()
    on = Tracing(ObservabilityConfig(otlp_endpoint=receiver.url))
    assert on.enabled and one(on) is True
    assert on.flush()
    assert {s["name"] for s in receiver.spans()} == {"doka.request", "doka.route", "chat m"}
    on.shutdown()


@pytest.mark.parametrize("ingress, setting, mirrored", [
    ({"num_replicas": 1}, "auto", False),  # one replica: its /metrics is the whole picture
    ({"num_replicas": 3}, "auto", True),
    ({"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}, "auto", True),
    ({"num_replicas": 1}, "on", True),
    ({"num_replicas": 3}, "off", False),
])
def test_ray_metrics_mirror_follows_the_ingress_scale(ingress, setting, mirrored):
    from app.config import DeploymentOptions, ObservabilityConfig

    assert ObservabilityConfig(ray_metrics=setting).mirror_to_ray(DeploymentOptions(**ingress)) is mirrored
