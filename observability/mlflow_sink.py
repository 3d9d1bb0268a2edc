"""MLflow: each gateway request becomes an MLflow trace (one LLM span), beside Langfuse.

On when `observability.mlflow` is set (`tracking_uri`, `experiment`; `os.environ/NAME` allowed).
Uses MLflow's own tracing client (`mlflow-tracing` / `mlflow-skinny`, or full `mlflow`):
`mlflow.start_span_no_context` with the request's real start and end times, so a trace shows the
latency the client saw. The span carries the model asked and the model that answered, the route
reason/strategy/score and artifact version, attempts, tokens (`mlflow.chat.tokenUsage`), cost
(`mlflow.llm.cost`), latency, TTFT and status; the trace is tagged `doka.request_id`,
`doka.model`, `doka.requested_model`, `doka.status` (searchable: `tag.doka.request_id = '...'`).
Prompt and output go in as span inputs/outputs only with `observability.store_prompts` (the
default); with `redact_prompts` they are `[redacted sha256:...]`, as the Langfuse sink sends them.
Feedback posted to `/v1/feedback` becomes an MLflow `feedback` assessment on the trace.

Nothing happens on the request path but a `put_nowait` on a bounded queue: a daemon thread
resolves the experiment (creating it once), builds the spans and MLflow's exporter sends them.
A full queue drops records (counted in `dropped`); an unreachable server is logged and retried,
never raised. The trace destination is set explicitly to the experiment, so MLflow sends to the
tracking server even when OTEL_EXPORTER_OTLP_* is set for the gateway's own spans, and MLflow's
tracer provider stays its own (never the process's global OTel provider).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import Any

from app.config import MlflowTracingConfig, ObservabilityConfig, resolve_secret
from observability.trace_store import TraceRecord, redact

logger = logging.getLogger("ray.serve")

_STOP = object()
_TRACE_IDS_KEPT = 10_000  # request id -> MLflow trace id, for feedback posted to this replica


def mlflow_configured(cfg: ObservabilityConfig) -> bool:
    return cfg.mlflow is not None and cfg.mlflow.enabled


def mlflow_importable() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def span_attributes(record: TraceRecord) -> dict[str, Any]:
    """The span attributes one request gets (None values left out)."""
    attrs: dict[str, Any] = {
        "doka.request_id": record.request_id,
        "doka.requested_model": record.requested_model,
        "doka.model": record.model,
        "doka.route_reason": record.route_reason,
        "doka.route_strategy": record.route_strategy,
        "doka.route_score": record.route_score,
        "doka.artifact_version": record.artifact_version,
        "doka.candidates": record.candidates or None,
        "doka.attempts": record.attempts or None,
        "doka.status_code": record.status_code,
        "doka.error": record.error,
        "doka.latency_ms": record.latency_ms,
        "doka.ttft_ms": record.ttft_ms,
        "doka.cost_usd": record.cost,
        "doka.key_id": record.key_id,
        "doka.stream": record.stream,
        "gen_ai.request.model": record.requested_model,
        "gen_ai.response.model": record.model,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "mlflow.llm.model": record.model or record.requested_model,
    }
    if record.prompt_tokens is not None or record.completion_tokens is not None:
        inp, out = record.prompt_tokens or 0, record.completion_tokens or 0
        attrs["mlflow.chat.tokenUsage"] = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
    if record.cost is not None:
        attrs["mlflow.llm.cost"] = {"total_cost": record.cost}
    return {k: v for k, v in attrs.items() if v is not None}


class MlflowSink:
    """Sends finished requests (TraceRecords) to MLflow as traces, from a background thread."""

    def __init__(self, cfg: ObservabilityConfig) -> None:
        import mlflow  # noqa: F401  (fail here, at replica start, if the client is missing)

        mcfg: MlflowTracingConfig = cfg.mlflow  # type: ignore[assignment]
        self.tracking_uri = str(resolve_secret(mcfg.tracking_uri))
        self.experiment = mcfg.experiment
        self._store_prompts = cfg.store_prompts
        self._redact = cfg.redact_prompts
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=mcfg.queue_size)
        self._trace_ids: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.experiment_id: str | None = None
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self._last_error_log = 0.0
        self._thread = threading.Thread(target=self._loop, name="doka-mlflow", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, cfg: ObservabilityConfig) -> "MlflowSink | None":
        """A sink when `observability.mlflow` is set, otherwise None (call sites just skip it)."""
        if not mlflow_configured(cfg):
            return None
        try:
            return cls(cfg)
        except Exception as e:  # no client installed, an unset os.environ/ reference: serve without it
            logger.warning("doka: observability.mlflow is set but MLflow tracing is off: %s (the client is "
                           "`pip install 'doka[mlflow]'`)", e)
            return None

    # -- request path: only queue puts -----------------------------------------------------------

    def _text(self, text: str | None) -> str | None:
        if text is None or not self._store_prompts:
            return None
        return redact(text) if self._redact else text

    def send(self, record: TraceRecord, prompt: str | None = None, output: str | None = None) -> None:
        item = ("trace", record.model_copy(), self._text(prompt if prompt is not None else record.prompt),
                self._text(output))
        self._put(item)

    def score(self, request_id: str, value: float, comment: str | None = None) -> None:
        self._put(("score", request_id, value, comment))

    def _put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    # -- background thread ---------------------------------------------------------------------

    def _setup(self) -> str:
        import mlflow
        from mlflow.entities.trace_location import MlflowExperimentLocation
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.tracking_uri)
        client = MlflowClient(self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                exp_id = client.create_experiment(self.experiment)
            except Exception:  # another replica created it first
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        mlflow.tracing.set_destination(MlflowExperimentLocation(experiment_id=exp_id))
        return exp_id

    def _emit(self, record: TraceRecord, prompt: str | None, output: str | None) -> None:
        import mlflow
        from mlflow.entities import SpanStatusCode

        start_ns = int(record.ts * 1e9)
        end_ns = start_ns + int((record.latency_ms or 0.0) * 1e6)
        tags = {"doka.request_id": record.request_id, "doka.requested_model": record.requested_model,
                "doka.status": str(record.status_code)}
        if record.model:
            tags["doka.model"] = record.model
        if record.route_strategy:
            tags["doka.route_strategy"] = record.route_strategy
        metadata = {"mlflow.trace.user": record.user or record.key_id or ""}
        span = mlflow.start_span_no_context(
            name="doka.chat",
            span_type="LLM",
            inputs={"prompt": prompt} if prompt is not None else None,
            attributes=span_attributes(record),
            tags=tags,
            metadata={k: v for k, v in metadata.items() if v},
            experiment_id=self.experiment_id,
            start_time_ns=start_ns,
        )
        status = SpanStatusCode.ERROR if record.status_code >= 400 else SpanStatusCode.OK
        span.end(outputs={"output": output} if output is not None else None, status=status, end_time_ns=end_ns)
        with self._lock:
            self._trace_ids[record.request_id] = span.trace_id
            while len(self._trace_ids) > _TRACE_IDS_KEPT:
                self._trace_ids.popitem(last=False)

    def _trace_id(self, request_id: str) -> str | None:
        with self._lock:
            tid = self._trace_ids.get(request_id)
        if tid is not None:
            return tid
        from mlflow.tracking import MlflowClient  # feedback for a request another replica served

        found = MlflowClient(self.tracking_uri).search_traces(
            locations=[self.experiment_id], filter_string=f"tag.`doka.request_id` = '{request_id}'",
            max_results=1, include_spans=False)
        return found[0].info.trace_id if found else None

    def _score(self, request_id: str, value: float, comment: str | None) -> None:
        import mlflow
        from mlflow.entities import AssessmentSource

        mlflow.flush_trace_async_logging(terminate=False)  # the trace may still be on its way (rare call)
        trace_id = self._trace_id(request_id)
        if trace_id is None:
            return
        mlflow.log_feedback(trace_id=trace_id, name="feedback", value=value, rationale=comment,
                            source=AssessmentSource(source_type="HUMAN", source_id="doka /v1/feedback"))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self.experiment_id is None:
                    self.experiment_id = self._setup()
                if item[0] == "trace":
                    self._emit(*item[1:])
                    self.sent += 1
                else:
                    self._score(*item[1:])
            except Exception as e:  # MLflow trouble must never reach a request
                self.failed += 1
                now = time.monotonic()
                if now - self._last_error_log > 30:
                    self._last_error_log = now
                    logger.warning("doka mlflow: %r (%d failed so far; the sink keeps going)", e, self.failed)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until queued records are handed to MLflow, then flush MLflow's exporter."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            import mlflow

            mlflow.flush_trace_async_logging(terminate=False)
        except Exception:  # noqa: BLE001 - best effort
            pass

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "dropped": self.dropped, "failed": self.failed, "queued": self._queue.qsize(),
                "experiment_id": self.experiment_id}

    def shutdown(self, flush_timeout_s: float = 10.0) -> None:
        if flush_timeout_s > 0:
            self.flush(flush_timeout_s)
        while True:  # make room for the stop marker: what is still queued is dropped
            try:
                self._queue.put_nowait(_STOP)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                    self.dropped += 1
                except queue.Empty:
                    pass


__all__ = ["MlflowSink", "mlflow_configured", "mlflow_importable", "span_attributes"]
