"""The config's service sections: deployments, router, egress, server, accounts, batches,
observability, cascades and console (schema only; `DokaConfig` in app/config.py ties them together)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from app.config_base import StrictModel


class DeploymentOptions(StrictModel):
    """Serve options for one deployment; fractional CPUs let the graph fit on 2 cores."""

    num_replicas: int | Literal["auto"] | None = 1
    num_cpus: float = 0.25
    num_gpus: float = 0
    max_ongoing_requests: int = 256
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    # 40 s: at or above the floor Serve puts on a direct-ingress replica (30 s drain + 5 s), so
    # `serve run` and a declarative serveConfigV2 end up with the same setting
    graceful_shutdown_timeout_s: float = Field(40.0, gt=0, description="Serve force-kills a draining replica after this")
    graceful_shutdown_wait_loop_s: float | None = Field(
        None, gt=0, description="how often a draining replica re-checks for in-flight requests (Serve's default: 2 s)")

    def serve_options(self) -> dict[str, Any]:
        actor = {"num_cpus": self.num_cpus, **({"num_gpus": self.num_gpus} if self.num_gpus else {})}
        actor.update(self.ray_actor_options)
        opts: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.graceful_shutdown_wait_loop_s is not None:  # only when set: rendered manifests stay stable
            opts["graceful_shutdown_wait_loop_s"] = self.graceful_shutdown_wait_loop_s
        if self.autoscaling_config:
            opts["autoscaling_config"] = self.autoscaling_config
        elif self.num_replicas is not None:
            opts["num_replicas"] = self.num_replicas
        return opts


class DeploymentsConfig(StrictModel):
    ingress: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.5))
    router: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.25))
    egress: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.5))
    egress_translated: DeploymentOptions | None = Field(
        None, description="an egress of its own (deployment EgressTranslated) for the models that take "
        "LiteLLM's full Router.acompletion path (Gemini, Cohere, Bedrock, ...: ~8 ms of CPU a call): "
        "their load then never stalls pass-through and Anthropic calls on `egress`; unset: one egress for all")


class RouterConfig(StrictModel):
    """How `auto` requests pick a model."""

    strategy: Literal["learned", "weighted_round_robin", "cheapest_healthy"] = "weighted_round_robin"
    fallback_strategy: Literal["weighted_round_robin", "cheapest_healthy"] = "weighted_round_robin"
    registry: str | None = Field(None, description="local dir or fsspec URL of the artifact registry")
    artifact: str = Field("latest", description="artifact version (letters, digits, `.`, `_`, `-`), or `latest`")
    signing_key: str | None = Field("os.environ/DOKA_SIGNING_KEY", description="HMAC key for artifacts")
    cost_weight: float = Field(0.5, ge=0)
    poll_interval_s: float = Field(0, ge=0, description="0 disables polling the registry for a newer `latest`")
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    placement: Literal["ingress", "deployment"] = Field(
        "ingress", description="where `auto` decisions run. `ingress`: inside each ingress replica, on "
        "the artifact its `reconfigure` loads (no extra hop: about 3 ms less CPU and one Serve call "
        "less per `auto` request, docs/benchmarks.md; right for the static featurizer). `deployment`: "
        "in the Router deployment (`deployments.router`: its own replicas and autoscaling, for a "
        "transformer featurizer or GPU replicas). Changing it is a redeploy, not a reload")
    novel_cascade: str | None = Field(
        None, description="a cascade name: an `auto` request whose prompt the artifact's novelty gate "
        "calls novel (`gated` family: nothing like its training prompts) is answered by this cascade "
        "instead of the routed model. Why: on kinds of prompts a router never saw its choice is "
        "near random, while agreement of two cheap answers still carries (docs/routing.md). "
        "Other families report no gate, so nothing changes with them")

    @field_validator("artifact")
    @classmethod
    def _artifact_version(cls, v: str) -> str:
        """Config, reconfigure user_config and the Serve REST API all arrive here: no path tricks."""
        from router.versions import check_version

        return check_version(v)


class EgressConfig(StrictModel):
    """Where calls to external providers (`provider: litellm` models) are made."""

    placement: Literal["ingress", "deployment"] = Field(
        "ingress", description="`ingress`: each ingress replica holds the egress (its litellm.Router, "
        "cooldowns, the pass-through and direct-translation paths) and calls providers itself: no "
        "Serve hop per request (about 3 ms less at 1 client) and one process less per node "
        "(docs/benchmarks.md). `deployment`: the Egress deployment (`deployments.egress`) with its "
        "own replicas, scaled and restarted apart from the ingress. Models on `deployments."
        "egress_translated` keep their own deployment either way. Changing it is a redeploy")
    cooldown_s: float = Field(
        30.0, ge=0, description="seconds a provider model sits out after failing (LiteLLM's cooldown, "
        "starting at its second failure in a row); a request for it meanwhile gets 503 with Retry-After "
        "(the seconds left) unless a fallback tier answers. 0 turns cooldowns off; the environment "
        "variable DOKA_COOLDOWN_S overrides it")


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    max_body_bytes: int = Field(1_048_576, gt=0)
    auto_model: str = "auto"
    data_dir: str = ".doka"
    app_name: str = "doka"

    @property
    def client_host(self) -> str:
        """Where a client on this machine connects: loopback when the server binds every interface."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


class AccountsConfig(StrictModel):
    """Keys, quotas and the spend ledger."""

    require_keys: bool = True
    master_key: str | None = "os.environ/DOKA_MASTER_KEY"
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir")
    settle_interval_s: float = Field(1.0, gt=0)
    transport: Literal["socket", "actor"] = Field(
        "socket", description="how ingress replicas send key checks and settlements to the accounts "
        "core: its token-guarded TCP socket (tens of us of CPU a round trip on each side) or Serve "
        "handle calls to the Accounts replica that holds it (about 1 ms a side; see "
        "load/bench_accounts_transport.py); admin calls always take the handle")
    batch_linger_ms: float = Field(
        1.0, ge=0, le=100, description="while busy, an ingress replica waits this long before each "
        "round trip to the accounts core so more checks and settlements share it (fewer, larger "
        "batches: less CPU on both sides; an idle gateway never waits)")
    call_timeout_s: float = Field(
        5.0, gt=0, description="deadline of each key check and settlement sent to the accounts core; "
        "past it the request gets 503 accounts_unavailable with Retry-After (a stalled core must not "
        "hang every request); an authorization that lands later is released at once")
    reservation_lease_s: float = Field(
        30.0, gt=0, description="an ingress replica silent this long is presumed lost: its open "
        "reservations are released and logged (status 502, nothing charged)")
    settle_retry_s: float = Field(
        60.0, ge=0, description="how long an ingress keeps retrying a settlement while the accounts "
        "core is unreachable (its replica being replaced); the answer waits, so a client never sees "
        "a 200 that has no ledger row")
    ledger_spool: bool = Field(
        True, description="fsync every ledger row to a local write-ahead spool before its settlement "
        "is answered, and replay it on start, so a killed Accounts replica loses no row a client saw "
        "answered (docs/reliability.md); off: rows wait in memory for the next flush")
    spool_dir: str | None = Field(
        None, description="the spool's directory; default: data_dir/ledger-spool/<database digest>. "
        "Must outlive the Accounts replica (a persistent volume on Kubernetes)")


class BatchesConfig(StrictModel):
    """OpenAI's Batch API (`/v1/files`, `/v1/batches`; batches/): where files live and how hard the
    background runner may push. Batch lines take the interactive path (keys, quotas, routing,
    fallbacks, ledger) but yield to interactive traffic."""

    enabled: bool = True
    storage_url: str | None = Field(
        None, description="where uploaded and result files live: a directory or any fsspec URL "
        "(s3://bucket/prefix for S3/MinIO); default: data_dir/batches")
    max_file_bytes: int = Field(50 * 1024 * 1024, gt=0, description="largest file `POST /v1/files` takes (413 past it)")
    max_lines: int = Field(50_000, gt=0, description="most requests one batch input file may hold")
    concurrency: int = Field(8, gt=0, le=1024, description="batch lines in flight at once, per ingress replica")
    yield_above: int = Field(
        4, ge=0, description="the runner starts no new line while this replica serves more than this many "
        "interactive requests (it waits `backoff_s` and looks again): batches never crowd out clients")
    backoff_s: float = Field(0.05, gt=0, description="the runner's wait while interactive traffic is above `yield_above`")
    lease_s: float = Field(
        30.0, gt=0, description="a replica running a batch renews its lease this often / 3; a batch whose "
        "lease ran out (its replica died) is resumed by any replica, skipping lines already recorded")
    poll_s: float = Field(1.0, gt=0, description="how often an idle runner looks for batches to run")


class MlflowTracingConfig(StrictModel):
    """`observability.mlflow`: each gateway request becomes an MLflow trace (off when absent)."""

    tracking_uri: str = Field(..., description="MLflow tracking server URI (http://host:5000, sqlite:///..., "
                              "databricks); `os.environ/MLFLOW_TRACKING_URI` reads it from the environment")
    experiment: str = Field("doka-gateway", description="experiment the traces go to (created if missing)")
    enabled: bool = True
    queue_size: int = Field(10_000, ge=1, description="requests waiting to be sent; more are dropped (counted, "
                            "never blocking a request)")


class ObservabilityConfig(StrictModel):
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; env OTEL_EXPORTER_OTLP_ENDPOINT")
    service_name: str = "doka"
    langfuse: bool = Field(True, description="send to Langfuse when LANGFUSE_* env vars are set")
    mlflow: MlflowTracingConfig | None = Field(
        None, description="send each request as an MLflow trace (tracking_uri, experiment); off by default")
    redact_prompts: bool = False
    traces_url: str | None = Field(None, description="trace store dir or fsspec URL; default data_dir/traces")
    store_prompts: bool = True
    tenant_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="a second listener serving only the per-key series "
        "(doka_key_*: requests, tokens, spend by key) for a trusted scraper; the gateway's anonymous "
        "/metrics never shows them (the master key as Bearer on /metrics does). Off by default")
    tenant_metrics_host: str = Field(
        "127.0.0.1", description="address the tenant listener binds (0.0.0.0 in a pod; keep it "
        "behind a NetworkPolicy)")
    ray_metrics: Literal["auto", "on", "off"] = Field(
        "auto", description="also record every gateway metric through ray.serve.metrics (Ray's "
        "cluster-wide export, all replicas). `auto`: only when the ingress may run more than one "
        "replica, since one replica's own /metrics is then not the whole picture; it costs a second "
        "write per metric on the hot path (docs/benchmarks.md)")

    def mirror_to_ray(self, ingress: "DeploymentOptions") -> bool:
        """Whether replicas mirror metrics to Ray (`ray_metrics`, resolving `auto` by the ingress's scale)."""
        if self.ray_metrics != "auto":
            return self.ray_metrics == "on"
        scale = ingress.autoscaling_config or {}
        most = scale.get("max_replicas", 1) if scale else ingress.num_replicas
        return most == "auto" or (most or 1) > 1


class CascadeConfig(StrictModel):
    """A cascade: answer with `weak` unless `verifier`, asked the same request, answers differently;
    then ask `strong` (and its fallback chain). Why: agreement of two cheap models is a signal
    about the answer that carries to kinds of prompts no router was trained on (docs/routing.md)."""

    weak: str = Field(description="the model whose answer is returned when the verifier agrees")
    verifier: str = Field(description="a second (cheap) model, called alongside `weak`")
    strong: str = Field(description="called when the two disagree or either fails; falls back along its chain")
    compare: Literal["text", "final_answer", "program"] = Field(
        "text", description="what must match: the whole normalised answer, the result a worked answer "
        "states (\\boxed{}, '#### x', 'the answer is x'; the whole text when none is stated), or the "
        "Python functions an answer defines, names of locals and comments aside (parsed, never run; the "
        "whole text when it defines none)")


class OIDCConfig(StrictModel):
    """Console single sign-on: OpenID Connect authorization code with PKCE against one issuer.

    Only subjects or groups on the allow-lists get an admin session; everyone else is refused."""

    issuer: str = Field(description="the issuer URL; https, or http only on a loopback address (a local test issuer)")
    client_id: str = Field(min_length=1)
    client_secret: str | None = Field(
        None, description="`os.environ/NAME`; none for a public client (PKCE alone)")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    redirect_uri: str | None = Field(
        None, description="the callback URL registered at the issuer (https://HOST/console/sso/callback); "
        "default: derived from the request (set it behind a proxy)")
    admin_subjects: list[str] = Field(default_factory=list, description="`sub` claims given an admin session")
    admin_groups: list[str] = Field(default_factory=list, description="groups given an admin session")
    groups_claim: str = Field("groups", description="the ID token claim that lists the user's groups")
    label: str = Field("Sign in with SSO", description="the sign-in button's text")

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        u = urlsplit(v)
        loopback = u.hostname in ("127.0.0.1", "localhost", "::1")
        if u.scheme != "https" and not (u.scheme == "http" and loopback) or not u.hostname:
            raise ValueError(f"console.oidc.issuer {v!r}: use an https URL (http only on a loopback address)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _someone_allowed(self) -> "OIDCConfig":
        if not self.admin_subjects and not self.admin_groups:
            raise ValueError("console.oidc: list admin_subjects or admin_groups (nobody is admitted by default)")
        return self


class ConsoleConfig(StrictModel):
    oidc: OIDCConfig | None = Field(None, description="single sign-on for the console; off when absent")
