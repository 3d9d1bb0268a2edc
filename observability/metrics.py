"""Prometheus metrics for the gateway, served on the ingress `/metrics`.

Each Serve replica is its own process, so each keeps its own prometheus-client registry and
the ingress `/metrics` shows that replica's view (one ingress replica: the whole gateway).
Every metric is mirrored to `ray.serve.metrics` when the process runs inside a Serve replica,
so Ray's metrics export (the head's Prometheus endpoint, `ray_doka_*`) aggregates all replicas.

Label cardinality is bounded: model labels accept only configured names, and key labels keep
the first `max_keys` distinct keys, folding the rest into `other`.

Per-tenant series (`TENANT_SPECS`: requests, tokens and spend by key) live in a registry of
their own: a tenant's spend is its business, not every scraper's. The anonymous `/metrics`
serves only the gateway series; the tenant ones go to the master key (Bearer) or to the
listener `observability.tenant_metrics_port` opens (docs/observability.md, docs/security.md).
They are not mirrored to Ray's cluster-wide export; the ledger (`/spend/*`) is the exact source.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from router.decision import RouteDecision

OTHER = "other"
NONE = "none"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ROUTING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


@dataclass(frozen=True)
class _Spec:
    kind: str  # counter | gauge | histogram
    name: str
    doc: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


SPECS = {
    s.name: s
    for s in (
        _Spec("counter", "doka_requests_total", "Gateway requests by served model and status", ("model", "status")),
        _Spec("counter", "doka_request_errors_total", "Failed requests by model and error type", ("model", "error")),
        _Spec("histogram", "doka_request_latency_seconds", "End-to-end request latency", ("model", "stream"), LATENCY_BUCKETS),
        _Spec("histogram", "doka_time_to_first_token_seconds", "Streaming time to first chunk", ("model",), LATENCY_BUCKETS),
        _Spec("counter", "doka_tokens_total", "Tokens by model and direction (input/output)", ("model", "direction")),
        _Spec("counter", "doka_cost_usd_total", "Spend in USD by model", ("model",)),
        _Spec("counter", "doka_routing_decisions_total", "auto-routing decisions by chosen model and strategy", ("model", "strategy")),
        _Spec("counter", "doka_routing_gate_total", "Decisions of a gated artifact by path (familiar: its in-distribution "
              "ensemble; novel: difficulty)", ("path",)),
        _Spec("histogram", "doka_routing_latency_seconds", "Router call latency seen by the ingress", ("strategy",), ROUTING_BUCKETS),
        _Spec("counter", "doka_upstream_attempts_total", "Upstream attempts by model and outcome", ("model", "outcome")),
        _Spec("counter", "doka_fallbacks_total", "Fallbacks from a failed model to the next one", ("from_model", "to_model")),
        _Spec("counter", "doka_cascade_outcomes_total", "Cascade requests by outcome (agreed, escalated, failed_check)",
              ("cascade", "outcome")),
        _Spec("gauge", "doka_router_degraded", "1 while the router answers with its fallback strategy", ()),
        _Spec("gauge", "doka_router_artifact_info", "The router artifact version in use (value 1)", ("version",)),
    )
}

# Series that name a tenant (a key id): master key or the tenant listener only, never mirrored.
TENANT_SPECS = {
    s.name: s
    for s in (
        _Spec("counter", "doka_key_requests_total", "Gateway requests by key, served model and status",
              ("model", "key", "status")),
        _Spec("counter", "doka_key_tokens_total", "Tokens by key, model and direction (input/output)",
              ("model", "key", "direction")),
        _Spec("counter", "doka_key_cost_usd_total", "Spend in USD by key and model", ("model", "key")),
    )
}


class LabelLimiter:
    """Maps raw label values onto a bounded set: allowed names, first-N values, then `other`."""

    def __init__(self, allowed: Iterable[str] | None = None, max_values: int = 50) -> None:
        self._allowed = set(allowed) if allowed is not None else None
        self._seen: set[str] = set()
        self._max = max_values
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None or value == "":
            return NONE
        if self._allowed is not None:
            return value if value in self._allowed else OTHER
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._max:
                self._seen.add(value)
                return value
        return OTHER


def _in_serve_replica() -> bool:
    try:
        from ray import serve

        serve.get_replica_context()
        return True
    except Exception:
        return False


class _Mirror:
    """ray.serve.metrics counterparts of the prometheus metrics (replica processes only)."""

    def __init__(self) -> None:
        from ray.serve import metrics as rm

        self._m: dict[str, Any] = {}
        for s in SPECS.values():
            if s.kind == "counter":  # Ray's exporter appends `_total` to counters itself
                self._m[s.name] = rm.Counter(s.name.removesuffix("_total"), description=s.doc, tag_keys=s.labels)
            elif s.kind == "gauge":
                self._m[s.name] = rm.Gauge(s.name, description=s.doc, tag_keys=s.labels)
            else:
                self._m[s.name] = rm.Histogram(s.name, description=s.doc, boundaries=list(s.buckets), tag_keys=s.labels)

    def record(self, name: str, labels: Mapping[str, str], value: float) -> None:
        spec, metric = SPECS[name], self._m[name]
        tags = dict(labels) or None
        if spec.kind == "counter":
            metric.inc(value, tags=tags)
        elif spec.kind == "gauge":
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)


class GatewayMetrics:
    """The gateway's metrics; the ingress calls these at the end of each request."""

    def __init__(
        self,
        model_names: Sequence[str] | None = None,
        max_keys: int = 100,
        registry: CollectorRegistry | None = None,
        mirror_to_ray: bool | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.tenant_registry = CollectorRegistry()  # per-key series: never in the anonymous exposition
        self._prom: dict[str, Any] = {}
        for specs, reg in ((SPECS, self.registry), (TENANT_SPECS, self.tenant_registry)):
            for s in specs.values():
                name = s.name.removesuffix("_total") if s.kind == "counter" else s.name
                if s.kind == "counter":
                    self._prom[s.name] = Counter(name, s.doc, s.labels, registry=reg)
                elif s.kind == "gauge":
                    self._prom[s.name] = Gauge(s.name, s.doc, s.labels, registry=reg)
                else:
                    self._prom[s.name] = Histogram(s.name, s.doc, s.labels, buckets=s.buckets, registry=reg)
        self._tenant_server: Any = None
        allowed = set(model_names) if model_names is not None else None
        self.model_label = LabelLimiter(allowed)
        self.key_label = LabelLimiter(max_values=max_keys)
        self.strategy_label = LabelLimiter(max_values=10)
        self.error_label = LabelLimiter(max_values=30)
        self.version_label = LabelLimiter(max_values=20)
        self._artifact_version: str | None = None
        self._degraded: bool | None = None
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        use_mirror = _in_serve_replica() if mirror_to_ray is None else mirror_to_ray
        self._mirror = _Mirror() if use_mirror else None

    def _record(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(labels.values()))
        target = self._children.get(key)
        if target is None:  # prometheus-client's labels() takes a lock and builds a key every call
            metric = self._prom[name]
            target = self._children[key] = metric.labels(**labels) if labels else metric
        spec = SPECS.get(name)
        kind = spec.kind if spec is not None else TENANT_SPECS[name].kind
        if kind == "counter":
            target.inc(value)
        elif kind == "gauge":
            target.set(value)
        else:
            target.observe(value)
        if self._mirror is not None and spec is not None:  # tenant series stay in this process
            self._mirror.record(name, labels, value)

    # ---- the call sites ----
    def routed(self, decision: RouteDecision, latency_s: float) -> None:
        """An `auto` decision from the router; also tracks degraded state and artifact version."""
        strategy = self.strategy_label(decision.strategy or NONE)
        self._record("doka_routing_decisions_total", model=self.model_label(decision.model), strategy=strategy)
        self._record("doka_routing_latency_seconds", latency_s, strategy=strategy)
        if decision.familiar is not None:
            self._record("doka_routing_gate_total", path="familiar" if decision.familiar else "novel")
        if decision.degraded is not None:
            self.set_router_state(degraded=decision.degraded, artifact_version=decision.artifact_version)
        elif decision.artifact_version:
            self.set_router_state(degraded=None, artifact_version=decision.artifact_version)

    def set_router_state(self, degraded: bool | None, artifact_version: str | None) -> None:
        if degraded is not None and degraded != self._degraded:  # a gauge: written when it changes
            self._degraded = degraded
            self._record("doka_router_degraded", 1.0 if degraded else 0.0)
        if artifact_version and artifact_version != self._artifact_version:
            if self._artifact_version is not None:
                self._record("doka_router_artifact_info", 0.0, version=self.version_label(self._artifact_version))
            self._artifact_version = artifact_version
            self._record("doka_router_artifact_info", 1.0, version=self.version_label(artifact_version))

    def attempt(self, model: str, ok: bool) -> None:
        self._record("doka_upstream_attempts_total", model=self.model_label(model), outcome="ok" if ok else "error")

    def fallback(self, from_model: str, to_model: str) -> None:
        self._record("doka_fallbacks_total", from_model=self.model_label(from_model), to_model=self.model_label(to_model))

    def cascade(self, name: str, outcome: str) -> None:
        self._record("doka_cascade_outcomes_total", cascade=self.model_label(name), outcome=outcome)

    def first_token(self, model: str, seconds: float) -> None:
        self._record("doka_time_to_first_token_seconds", seconds, model=self.model_label(model))

    def request_done(
        self,
        model: str | None,
        key: str | None,
        status_code: int,
        latency_s: float,
        stream: bool = False,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cost: float | None = None,
        error: str | None = None,
    ) -> None:
        """One finished request (success or failure)."""
        m, k = self.model_label(model), self.key_label(key)
        status = "ok" if status_code < 400 else str(status_code)
        self._record("doka_requests_total", model=m, status=status)
        self._record("doka_key_requests_total", model=m, key=k, status=status)
        self._record("doka_request_latency_seconds", latency_s, model=m, stream="true" if stream else "false")
        if status_code >= 400:
            self._record("doka_request_errors_total", model=m, error=self.error_label(error or status))
        if prompt_tokens:
            self._record("doka_tokens_total", float(prompt_tokens), model=m, direction="input")
            self._record("doka_key_tokens_total", float(prompt_tokens), model=m, key=k, direction="input")
        if completion_tokens:
            self._record("doka_tokens_total", float(completion_tokens), model=m, direction="output")
            self._record("doka_key_tokens_total", float(completion_tokens), model=m, key=k, direction="output")
        if cost:
            self._record("doka_cost_usd_total", float(cost), model=m)
            self._record("doka_key_cost_usd_total", float(cost), model=m, key=k)

    def exposition(self, tenant: bool = False) -> tuple[bytes, str]:
        """(body, content type) for `/metrics`: the gateway series, plus the per-key ones if `tenant`."""
        body = generate_latest(self.registry)
        if tenant:
            body += generate_latest(self.tenant_registry)
        return body, CONTENT_TYPE_LATEST

    def serve_tenant(self, port: int, host: str = "127.0.0.1") -> bool:
        """Serve the per-key series on their own listener (`observability.tenant_metrics_port`).

        One listener per node: a second ingress replica on the same node finds the port taken
        and returns False (that node's listener shows the first replica's view)."""
        from prometheus_client import start_http_server

        try:
            self._tenant_server, _ = start_http_server(port, addr=host, registry=self.tenant_registry)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._tenant_server is not None:
            self._tenant_server.shutdown()
            self._tenant_server.server_close()
            self._tenant_server = None
