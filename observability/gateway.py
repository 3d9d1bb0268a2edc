"""One facade the ingress calls: per request it feeds spans, metrics, the trace store and Langfuse.

Keeping every sink behind `Observability.start(...) -> RequestObservation` means the ingress
has one call site per concern (start, routing, attempt, first token, finish) and never
imports the individual sinks.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from app.config import DokaConfig
from observability.feedback import FeedbackIn, FeedbackStore, parse_feedback
from observability.langfuse_sink import LangfuseSink
from observability.metrics import GatewayMetrics
from observability.mlflow_sink import MlflowSink
from observability.trace_store import TraceRecord, TraceStore, prompt_for_store, prompt_text, traces_root
from observability.tracing import AttemptSpan, RequestSpan, RoutingSpan, Tracing
from router.decision import RouteDecision

logger = logging.getLogger("ray.serve")


MAX_OPEN_REQUESTS = 10_000

_current: contextvars.ContextVar["RequestObservation | None"] = contextvars.ContextVar("doka_request", default=None)


def current() -> "RequestObservation | None":
    """The request being served by this asyncio task (set by `Observability.start`)."""
    return _current.get()


class RequestObservation:
    """Everything observed about one request, from arrival to the last byte."""

    def __init__(self, obs: "Observability", span: RequestSpan, record: TraceRecord, prompt: str) -> None:
        self._obs = obs
        self.span = span
        self.record = record
        self._prompt = prompt
        self._start = time.perf_counter()
        self._finished = False
        self.last_response: dict[str, Any] | None = None  # summary of the answering attempt
        self._last_failed = False  # the latest attempt failed: the next one is a fallback

    @contextmanager
    def routing(self, candidates: list[str] | None = None, started: float | None = None) -> Iterator["_Routing"]:
        """Wrap the router call; call `.decided(decision)` with the router's dict.

        `started`: when the call was sent, if before this (the ingress overlaps it with authorization).
        """
        start = time.perf_counter() if started is None else started
        with self.span.routing(candidates) as rs:
            yield _Routing(self, rs, start, candidates)

    @contextmanager
    def attempt(self, model: str, upstream_model: str | None = None) -> Iterator[AttemptSpan]:
        """One upstream attempt; one started after a failed attempt counts as a fallback (a
        cascade's verifier and strong calls follow answers, not failures)."""
        if self.record.attempts and self._last_failed:
            self._obs.metrics.fallback(self.record.attempts[-1], model)
        self.record.attempts.append(model)
        ok = False
        try:
            with self.span.attempt(model, upstream_model) as attempt:
                yield attempt
                ok = True
        finally:
            self._last_failed = not ok
            self._obs.metrics.attempt(model, ok)

    @contextmanager
    def streaming(self, model: str) -> Iterator[Any]:
        with self.span.streaming(model) as s:
            yield s

    def first_token(self, model: str) -> None:
        if self.record.ttft_ms is None:
            seconds = time.perf_counter() - self._start
            self.record.ttft_ms = round(seconds * 1000, 3)
            self._obs.metrics.first_token(model, seconds)

    def finish(
        self,
        model: str | None,
        response: Mapping[str, Any] | None = None,
        status_code: int = 200,
        error: str | None = None,
        output_text: str | None = None,
        cost: float | None = None,
    ) -> TraceRecord:
        """Close the request: span, metrics, trace store, Langfuse. Safe to call twice (no-op)."""
        if self._finished:
            return self.record
        self._finished = True
        rec = self.record
        rec.model = model
        rec.status_code = status_code
        rec.error = error
        rec.latency_ms = round((time.perf_counter() - self._start) * 1000, 3)
        response = response or self.last_response
        usage = (response or {}).get("usage") or {}
        rec.prompt_tokens = usage.get("prompt_tokens")
        rec.completion_tokens = usage.get("completion_tokens")
        if cost is None and model and rec.prompt_tokens is not None:
            entry = self._obs.cfg.model(model)
            cost = entry.cost(rec.prompt_tokens or 0, rec.completion_tokens or 0) if entry else None
        rec.cost = cost
        if output_text is None and response:
            choices = response.get("choices") or []
            if choices:
                msg = choices[0].get("message") or {}
                output_text = msg.get("content") if isinstance(msg, dict) else None
                output_text = output_text or choices[0].get("text")
        self.span.finish(model, response, status_code=status_code, error=error, attempts=len(rec.attempts))
        self.span.end()
        self._obs.metrics.request_done(
            model or rec.requested_model,
            rec.key_id,
            status_code,
            rec.latency_ms / 1000,
            stream=rec.stream,
            prompt_tokens=rec.prompt_tokens,
            completion_tokens=rec.completion_tokens,
            cost=rec.cost,
            error=error,
        )
        self._obs.store(rec, self._prompt, output_text)
        return rec


class ObservedBackend:
    """Wraps a ModelBackend so each upstream call becomes an attempt span + metrics.

    Calls made outside an observed request (health checks) pass straight through.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def _call(self, method: str, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        req = current()
        call = getattr(self._inner, method)
        if req is None:
            return await call(model, body, timeout)
        with req.attempt(model) as attempt:
            result = await call(model, body, timeout)
            attempt.succeeded(result)
            req.last_response = result
            return result

    async def chat(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self._call("chat", model, body, timeout)

    async def completion(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self._call("completion", model, body, timeout)

    async def embedding(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self._call("embedding", model, body, timeout)

    def chat_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._stream(self._inner.chat_stream(model, body, timeout), model)

    def completion_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._stream(self._inner.completion_stream(model, body, timeout), model)

    async def _stream(self, it: AsyncIterator[dict[str, Any]], model: str) -> AsyncIterator[dict[str, Any]]:
        req = current()
        if req is None:
            async for chunk in it:
                yield chunk
            return
        summary: dict[str, Any] = {"model": model, "choices": []}
        reasons: list[str] = []
        with req.attempt(model) as attempt:
            first = True
            stream_cm = None
            try:
                async for chunk in it:
                    if first:
                        first = False
                        req.first_token(model)
                        stream_cm = req.streaming(model)
                        stream_cm.__enter__()
                    summary["model"] = chunk.get("model") or summary["model"]
                    summary["id"] = chunk.get("id") or summary.get("id")
                    if chunk.get("usage"):
                        summary["usage"] = chunk["usage"]
                    reasons.extend(c["finish_reason"] for c in chunk.get("choices") or [] if c.get("finish_reason"))
                    yield chunk
            finally:
                if stream_cm is not None:
                    stream_cm.__exit__(None, None, None)
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    await aclose()
            summary["choices"] = [{"finish_reason": r} for r in reasons]
            attempt.succeeded(summary)
            req.last_response = summary


class _Routing:
    def __init__(self, req: RequestObservation, rs: RoutingSpan, start: float, candidates: list[str] | None) -> None:
        self._req, self._rs, self._start, self._candidates = req, rs, start, candidates

    def decided(self, decision: RouteDecision) -> None:
        self._rs.decided(decision)
        if decision.degraded is None and decision.strategy:  # router answered with its fallback?
            decision = decision.replace(degraded=decision.strategy != self._req._obs.cfg.router.strategy)
        self._req._obs.metrics.routed(decision, time.perf_counter() - self._start)
        rec = self._req.record
        rec.candidates = list(self._candidates or [])
        rec.route_strategy = decision.strategy
        score = decision.score
        rec.route_score = float(score) if isinstance(score, (int, float)) else None
        rec.route_reason = decision.reason
        rec.artifact_version = decision.artifact_version


class _NoRouting:
    def decided(self, decision: RouteDecision) -> None:
        return None


class Observability:
    """Per-process (per replica) observability state, built once from the doka config."""

    def __init__(self, cfg: DokaConfig, mirror_to_ray: bool | None = None) -> None:
        self.cfg = cfg
        ocfg = cfg.observability
        self.tracing = Tracing(ocfg)
        if mirror_to_ray is None:  # only the ingress builds an Observability; off outside a replica
            from observability.metrics import _in_serve_replica

            mirror_to_ray = _in_serve_replica() and ocfg.mirror_to_ray(cfg.deployments.ingress)
        self.metrics = GatewayMetrics(model_names=cfg.public_names(), mirror_to_ray=mirror_to_ray)
        if ocfg.tenant_metrics_port and not self.metrics.serve_tenant(ocfg.tenant_metrics_port, ocfg.tenant_metrics_host):
            logger.warning("doka: observability.tenant_metrics_port %s on %s is taken (another ingress replica on "
                           "this node?); this replica's per-key series are served to the master key only",
                           ocfg.tenant_metrics_port, ocfg.tenant_metrics_host)
        root = traces_root(cfg)
        self.traces = TraceStore(root)
        self.feedback = FeedbackStore(root)
        self.langfuse = LangfuseSink.from_env(ocfg)
        self.mlflow = MlflowSink.from_config(ocfg)
        self._open: OrderedDict[str, RequestObservation] = OrderedDict()

    def wrap_backends(self, backends: dict[str, Any]) -> dict[str, Any]:
        """The same backends (shared ones stay shared), each call observed as an attempt."""
        wrapped: dict[int, ObservedBackend] = {}
        return {name: wrapped.setdefault(id(b), ObservedBackend(b)) for name, b in backends.items()}

    @contextmanager
    def routing(self, candidates: list[str] | None = None, started: float | None = None) -> Iterator[Any]:
        """The router call of the current request (a no-op outside one)."""
        req = current()
        if req is None:
            yield _NoRouting()
            return
        with req.routing(candidates, started) as r:
            yield r

    def finish(
        self,
        request_id: str,
        model: str | None,
        usage: Mapping[str, Any] | None = None,
        status_code: int = 200,
        error: str | None = None,
        route_reason: str | None = None,
        cost: float | None = None,
    ) -> TraceRecord | None:
        """Close an open request by id (the ingress's settle point for answers, errors and streams).

        `cost`: the request's USD when it is more than the answering call's (a cascade's calls)."""
        req = self._open.pop(request_id, None)
        if req is None:
            return None
        response = dict(req.last_response or {})
        if usage:
            response["usage"] = dict(usage)
        if route_reason:  # the ingress's reason (explicit, chain, fallback tier) + the router's
            rr = req.record.route_reason
            req.record.route_reason = route_reason if not rr or rr == route_reason else f"{route_reason}; {rr}"
        return req.finish(model, response or None, status_code=status_code, error=error, cost=cost)

    def start(
        self,
        request_id: str,
        requested_model: str,
        body: Mapping[str, Any] | None = None,
        key_id: str | None = None,
        stream: bool = False,
        prompt: str | None = None,
    ) -> RequestObservation:
        """Begin observing a request; the ingress must call `finish` on the result.

        `prompt`: the request's `app.schemas.prompt_text` when the caller has it already (the
        ingress computes it once per request); the trace store records exactly that text.
        """
        if prompt is None:
            prompt = prompt_text(dict(body or {}))
        user = (body or {}).get("user")
        record = TraceRecord(
            request_id=request_id,
            requested_model=requested_model,
            key_id=key_id,
            user=user if isinstance(user, str) else None,
            stream=stream,
            prompt=prompt_for_store(prompt, self.cfg.observability),
        )
        span = self.tracing.start_request(request_id, requested_model, stream=stream, key_id=key_id)
        req = RequestObservation(self, span, record, prompt)
        self._open[request_id] = req
        while len(self._open) > MAX_OPEN_REQUESTS:  # requests that failed before settling
            _, stale = self._open.popitem(last=False)
            stale.finish(None, status_code=499, error="abandoned before completion")
        _current.set(req)
        return req

    def store(self, record: TraceRecord, prompt: str | None, output_text: str | None) -> None:
        self.traces.append(record)
        if self.langfuse is not None:
            try:
                self.langfuse.send(record, prompt=prompt, output=output_text)
            except Exception as e:  # Langfuse trouble must never fail a request
                print(f"doka langfuse: {e!r}", flush=True)
        if self.mlflow is not None:
            try:  # a queue put: the MLflow calls run on the sink's own thread
                self.mlflow.send(record, prompt=prompt, output=output_text)
            except Exception as e:
                print(f"doka mlflow: {e!r}", flush=True)

    def add_feedback(self, payload: Any, key_id: str | None = None) -> tuple[int, dict[str, Any]]:
        """Handle a `POST /v1/feedback` body: (status code, JSON body)."""
        parsed = parse_feedback(payload)
        if not isinstance(parsed, FeedbackIn):
            return 400, parsed
        record = self.feedback.add(parsed, key_id=key_id)
        if self.langfuse is not None:
            try:
                self.langfuse.score(parsed.request_id, parsed.score, parsed.comment)
            except Exception as e:
                print(f"doka langfuse: {e!r}", flush=True)
        if self.mlflow is not None:
            try:
                self.mlflow.score(parsed.request_id, parsed.score, parsed.comment)
            except Exception as e:
                print(f"doka mlflow: {e!r}", flush=True)
        return 200, {"object": "feedback", "request_id": record.request_id, "score": record.score, "stored": True}

    def metrics_body(self, tenant: bool = False) -> tuple[bytes, str]:
        """The exposition; per-key series only when `tenant` (the caller checked the master key)."""
        return self.metrics.exposition(tenant=tenant)

    def close(self) -> None:
        """Flush everything (called on replica shutdown)."""
        self.traces.close()
        self.feedback.close()
        self.metrics.close()
        self.tracing.flush()
        if self.langfuse is not None:
            self.langfuse.flush()
        if self.mlflow is not None:
            self.mlflow.shutdown()
