"""Langfuse: each gateway request becomes a Langfuse trace holding one generation.

Uses the langfuse SDK (v3+ sends OpenTelemetry spans to `<host>/api/public/otel/v1/traces`).
Enabled only when `observability.langfuse` is true and LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY
and LANGFUSE_HOST (or LANGFUSE_BASE_URL) are set. The trace id is derived from the doka request
id, so feedback posted later lands on the same Langfuse trace as a score.

The sink keeps its own TracerProvider so Langfuse never becomes the process's global OTel
provider and the gateway's own spans are not sent to Langfuse twice.
"""

from __future__ import annotations

import os
from typing import Any

from app.config import ObservabilityConfig
from observability.trace_store import TraceRecord, redact

REQUIRED_ENV = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY")


def langfuse_configured(cfg: ObservabilityConfig) -> bool:
    has_host = bool(os.environ.get("LANGFUSE_HOST") or os.environ.get("LANGFUSE_BASE_URL"))
    return cfg.langfuse and has_host and all(os.environ.get(k) for k in REQUIRED_ENV)


class LangfuseSink:
    """Sends finished requests (TraceRecords) and feedback scores to Langfuse."""

    def __init__(self, cfg: ObservabilityConfig, flush_interval_s: float | None = None) -> None:
        from langfuse import Langfuse
        from opentelemetry.sdk.trace import TracerProvider

        self._redact = cfg.redact_prompts
        self.client = Langfuse(
            tracer_provider=TracerProvider(),
            flush_interval=flush_interval_s,
            release=None,
        )

    @classmethod
    def from_env(cls, cfg: ObservabilityConfig) -> "LangfuseSink | None":
        """A sink when Langfuse is configured, otherwise None (call sites just skip it)."""
        return cls(cfg) if langfuse_configured(cfg) else None

    def trace_id(self, request_id: str) -> str:
        return self.client.create_trace_id(seed=request_id)

    def _text(self, text: str | None) -> str | None:
        if text is None:
            return None
        return redact(text) if self._redact else text

    def send(self, record: TraceRecord, prompt: str | None = None, output: str | None = None) -> None:
        """One request -> one Langfuse generation in a trace keyed by the request id."""
        from langfuse import propagate_attributes

        usage: dict[str, int] = {}
        if record.prompt_tokens is not None:
            usage["input"] = record.prompt_tokens
        if record.completion_tokens is not None:
            usage["output"] = record.completion_tokens
        metadata: dict[str, Any] = {
            "request_id": record.request_id,
            "requested_model": record.requested_model,
            "route_strategy": record.route_strategy,
            "route_reason": record.route_reason,
            "route_score": record.route_score,
            "artifact_version": record.artifact_version,
            "candidates": record.candidates,
            "attempts": record.attempts,
            "latency_ms": record.latency_ms,
            "status_code": record.status_code,
            "key_id": record.key_id,
        }
        with propagate_attributes(
            user_id=record.user or record.key_id,
            trace_name=f"doka {record.requested_model}",
            tags=[t for t in ("doka", record.route_strategy) if t],
        ):
            generation = self.client.start_observation(
                trace_context={"trace_id": self.trace_id(record.request_id)},
                name="doka.chat",
                as_type="generation",
                model=record.model or record.requested_model,
                input=self._text(prompt if prompt is not None else record.prompt),
                output=self._text(output),
                usage_details=usage or None,
                cost_details={"total": record.cost} if record.cost is not None else None,
                metadata={k: v for k, v in metadata.items() if v is not None},
                level="ERROR" if record.status_code >= 400 else "DEFAULT",
                status_message=record.error,
            )
            generation.end()

    def score(self, request_id: str, value: float, comment: str | None = None) -> None:
        """Attach feedback to the request's Langfuse trace."""
        self.client.create_score(trace_id=self.trace_id(request_id), name="feedback", value=value, comment=comment)

    def flush(self) -> None:
        self.client.flush()

    def shutdown(self) -> None:
        self.client.shutdown()
