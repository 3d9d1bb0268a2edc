"""Observability: OpenTelemetry spans, Prometheus metrics, the trace store, Langfuse, feedback."""
