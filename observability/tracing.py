"""OpenTelemetry tracing for the gateway: one span per request, children for routing,
each upstream attempt (so fallbacks are visible) and streaming.

Attributes follow the OpenTelemetry GenAI semantic conventions (`gen_ai.*`) so any
GenAI-aware backend (Langfuse, Phoenix, Grafana Tempo) understands them, plus doka's own
routing attributes (`llm.routing.*`, `router.*`).

Spans go to an OTLP/HTTP collector taken from `observability.otlp_endpoint` or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` env vars. With neither set
(and no exporter passed in) no span is created at all: the tracer is OpenTelemetry's no-op
tracer, whose non-recording spans ignore attributes, so the call sites never branch and a
request pays nothing for tracing it does not export (Langfuse keeps its own provider).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from app.config import ObservabilityConfig
from router.decision import RouteDecision

TRACER_NAME = "doka.gateway"
TRACES_PATH = "/v1/traces"

# GenAI semantic-convention keys (opentelemetry-semantic-conventions, gen_ai.* namespace).
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
# doka's routing attributes.
ROUTING_SELECTED = "llm.routing.selected_model"
ROUTING_LATENCY_MS = "llm.routing.latency_ms"
ROUTING_CANDIDATES = "llm.routing.candidates"
ROUTING_REASON = "llm.routing.reason"
ROUTER_STRATEGY = "router.strategy"
ROUTER_SCORE = "router.score"
ROUTER_FAMILIAR = "router.familiar"  # gated artifacts: the prompt passed the novelty gate
ROUTER_CASCADE = "router.cascade"  # `router.novel_cascade`: the cascade that answered a novel auto prompt
ROUTER_ARTIFACT = "router.artifact_version"


def resolve_endpoint(cfg: ObservabilityConfig) -> str | None:
    """The OTLP/HTTP traces URL, or None when no collector is configured.

    A configured endpoint may be the collector base (`http://otel:4318`) or the full traces
    URL; the env vars follow the OTel spec (base for the generic one, full for TRACES).
    """
    if cfg.otlp_endpoint:
        base = cfg.otlp_endpoint.rstrip("/")
        return base if base.endswith(TRACES_PATH) else base + TRACES_PATH
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + TRACES_PATH
    return None


def make_provider(cfg: ObservabilityConfig, exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider for this process; batches spans off the request path."""
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
    if exporter is None:
        endpoint = resolve_endpoint(cfg)
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def _set(span: Span, key: str, value: Any) -> None:
    if value is not None:
        span.set_attribute(key, value)


class AttemptSpan:
    """One upstream call: a model tried at a position in the fallback chain."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def succeeded(self, response: Mapping[str, Any] | None = None) -> None:
        """Record the upstream's answer (an OpenAI ChatCompletion dict or a final chunk)."""
        if response:
            record_response(self.span, response)
        self.span.set_attribute("doka.attempt.outcome", "ok")
        self.span.set_status(Status(StatusCode.OK))

    def failed(self, error: BaseException | str) -> None:
        message = str(error)
        self.span.set_attribute("doka.attempt.outcome", "error")
        self.span.set_attribute("error.type", type(error).__name__ if isinstance(error, BaseException) else "error")
        if isinstance(error, BaseException):
            self.span.record_exception(error)
        self.span.set_status(Status(StatusCode.ERROR, message[:200]))


def record_response(span: Span, response: Mapping[str, Any]) -> None:
    """Set GenAI response attributes from an OpenAI-shaped response or final stream chunk."""
    if not span.is_recording():  # tracing off: nothing would be kept
        return
    _set(span, GEN_AI_RESPONSE_MODEL, response.get("model"))
    _set(span, GEN_AI_RESPONSE_ID, response.get("id"))
    usage = response.get("usage") or {}
    _set(span, GEN_AI_INPUT_TOKENS, usage.get("prompt_tokens"))
    _set(span, GEN_AI_OUTPUT_TOKENS, usage.get("completion_tokens"))
    reasons = [c.get("finish_reason") for c in response.get("choices") or [] if c.get("finish_reason")]
    if reasons:
        span.set_attribute(GEN_AI_FINISH_REASONS, reasons)


class RoutingSpan:
    """The router call; its decision is copied onto the request span too."""

    def __init__(self, span: Span, request_span: Span) -> None:
        self.span = span
        self._request_span = request_span
        self._start = time.perf_counter()

    def decided(self, decision: RouteDecision) -> None:
        if not self.span.is_recording():
            return
        latency_ms = round((time.perf_counter() - self._start) * 1000, 3)
        for target in (self.span, self._request_span):
            _set(target, ROUTING_SELECTED, decision.model)
            _set(target, ROUTER_STRATEGY, decision.strategy)
            _set(target, ROUTER_SCORE, _float_or_none(decision.score))
            _set(target, ROUTER_ARTIFACT, decision.artifact_version)
            _set(target, ROUTING_REASON, decision.reason)
            if decision.familiar is not None:
                target.set_attribute(ROUTER_FAMILIAR, decision.familiar)
            _set(target, ROUTER_CASCADE, decision.cascade)
            target.set_attribute(ROUTING_LATENCY_MS, latency_ms)


class RequestSpan:
    """The span of one gateway request and factories for its children."""

    def __init__(self, tracer: trace.Tracer, span: Span) -> None:
        self._tracer = tracer
        self.span = span
        self._attempts = 0

    @contextmanager
    def _child(self, name: str, kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Span]:
        """A child span that is never made "current": safe across awaits and async generators."""
        span = self._tracer.start_span(name, context=trace.set_span_in_context(self.span), kind=kind)
        try:
            yield span
        except BaseException as e:
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, str(e)[:200]))
            raise
        finally:
            span.end()

    @contextmanager
    def routing(self, candidates: list[str] | None = None) -> Iterator["RoutingSpan"]:
        """Wrap the router call; call `.decided(decision)` inside with the router's answer."""
        with self._child("doka.route") as span:
            if candidates:
                span.set_attribute(ROUTING_CANDIDATES, list(candidates))
            yield RoutingSpan(span, self.span)

    @contextmanager
    def attempt(self, model: str, upstream_model: str | None = None, system: str | None = None) -> Iterator[AttemptSpan]:
        """One upstream attempt; the index says where in the fallback chain it sits."""
        index = self._attempts
        self._attempts += 1
        with self._child(f"chat {model}", kind=SpanKind.CLIENT) as span:
            span.set_attribute(GEN_AI_OPERATION, "chat")
            span.set_attribute(GEN_AI_REQUEST_MODEL, model)
            _set(span, GEN_AI_SYSTEM, system)
            _set(span, "doka.upstream_model", upstream_model)
            span.set_attribute("doka.attempt.index", index)
            span.set_attribute("doka.attempt.fallback", index > 0)
            attempt = AttemptSpan(span)
            try:
                yield attempt
            except BaseException as e:  # the child context records the exception and status
                span.set_attribute("doka.attempt.outcome", "error")
                span.set_attribute("error.type", type(e).__name__)
                raise

    @contextmanager
    def streaming(self, model: str) -> Iterator[Span]:
        """The time spent relaying a stream to the client; counts chunks."""
        with self._child("doka.stream") as span:
            span.set_attribute(GEN_AI_RESPONSE_MODEL, model)
            yield span

    def finish(
        self,
        model: str | None,
        response: Mapping[str, Any] | None = None,
        status_code: int = 200,
        error: str | None = None,
        attempts: int | None = None,
    ) -> None:
        """Final outcome of the request (call once, before the `request` context ends)."""
        if not self.span.is_recording():
            return
        _set(self.span, "doka.served_model", model)
        if response:
            record_response(self.span, response)
        self.span.set_attribute("http.response.status_code", status_code)
        self.span.set_attribute("doka.attempts", attempts if attempts is not None else self._attempts)
        if error or status_code >= 400:
            self.span.set_status(Status(StatusCode.ERROR, (error or "")[:200]))

    def end(self) -> None:
        if self.span.is_recording():
            self.span.end()


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class Tracing:
    """Per-process tracing facade used by the ingress."""

    def __init__(self, cfg: ObservabilityConfig, exporter: SpanExporter | None = None) -> None:
        self.enabled = exporter is not None or resolve_endpoint(cfg) is not None
        self.provider: TracerProvider | None = make_provider(cfg, exporter) if self.enabled else None
        self.tracer: trace.Tracer = self.provider.get_tracer(TRACER_NAME) if self.provider else trace.NoOpTracer()

    def start_request(
        self, request_id: str, requested_model: str, stream: bool = False, key_id: str | None = None
    ) -> RequestSpan:
        """The root span of one request; the caller ends it with `RequestSpan.end()`.

        Explicit start/end (rather than a `with`) lets a streaming response end the span
        when its last chunk is sent, after the handler has returned.
        """
        span = self.tracer.start_span("doka.request", kind=SpanKind.SERVER)
        span.set_attribute("doka.request_id", request_id)
        span.set_attribute(GEN_AI_OPERATION, "chat")
        span.set_attribute(GEN_AI_REQUEST_MODEL, requested_model)
        span.set_attribute("doka.stream", stream)
        _set(span, "doka.key_id", key_id)
        return RequestSpan(self.tracer, span)

    @contextmanager
    def request(
        self, request_id: str, requested_model: str, stream: bool = False, key_id: str | None = None
    ) -> Iterator[RequestSpan]:
        """`start_request` as a context manager; exceptions are recorded and re-raised."""
        req = self.start_request(request_id, requested_model, stream, key_id)
        try:
            yield req
        except BaseException as e:
            req.span.record_exception(e)
            req.span.set_status(Status(StatusCode.ERROR, str(e)[:200]))
            raise
        finally:
            req.end()

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms) if self.provider else True

    def shutdown(self) -> None:
        if self.provider:
            self.provider.shutdown()
