"""The one doka config file: a pydantic model of the YAML that drives the local run,
the tests and the RayService manifest.

The model list follows LiteLLM's `model_list` shape so existing LiteLLM proxy configs
mostly carry over. Secrets are never stored in the file: any string value of the form
`os.environ/NAME` is resolved from the environment when it is used (`resolve_secret`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.pricing import Price, price_of

ENV_PREFIX = "os.environ/"


class ConfigError(ValueError):
    """A config file that cannot be used; the message says where and why."""


def resolve_secret(value: Any) -> Any:
    """Resolve `os.environ/NAME` references; other values pass through unchanged."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if name not in os.environ:
            raise ConfigError(f"environment variable {name!r} is referenced by the config but not set")
        return os.environ[name]
    if isinstance(value, dict):
        return {k: resolve_secret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_secret(v) for v in value]
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderLimits(_Strict):
    """A provider's own limits on one model (a free tier's 6,000 requests a day, say).

    Why: LiteLLM does not enforce them, so without this a used-up tier is found out by its 429.
    doka counts every call to the model in the accounts core (shared by all ingress replicas,
    persisted in the accounts database) and skips the tier before it fails. Minute windows
    are fixed clock minutes; day windows are the provider's calendar day in `reset_timezone`.
    Token limits are admitted against the request's worst case and settled with its usage.
    """

    rpm: int | None = Field(None, gt=0, description="requests per clock minute")
    tpm: int | None = Field(None, gt=0, description="tokens (prompt + completion) per clock minute")
    rpd: int | None = Field(None, gt=0, description="requests per day (the provider's day, see reset_timezone)")
    tpd: int | None = Field(None, gt=0, description="tokens (prompt + completion) per day")
    reset_timezone: str = Field(
        "UTC", description="IANA time zone in which the provider's day starts (e.g. America/Los_Angeles)")

    @field_validator("reset_timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {name!r} (use an IANA name such as UTC or America/Los_Angeles)") from e
        return name

    @model_validator(mode="after")
    def _some(self) -> "ProviderLimits":
        if self.rpm is None and self.tpm is None and self.rpd is None and self.tpd is None:
            raise ValueError("limits: set at least one of rpm, tpm, rpd, tpd")
        return self


class ModelInfo(_Strict):
    """Gateway-side facts about one model: tier, timeout, price, visibility."""

    tier: str = "external"
    timeout: float = Field(30.0, gt=0, description="seconds for one attempt on this model")
    input_cost_per_token: float | None = Field(None, ge=0)
    output_cost_per_token: float | None = Field(None, ge=0)
    parallel: bool = Field(False, description="reachable only by explicit name, never an `auto` candidate")
    weight: float = Field(1.0, ge=0, description="weight for the weighted round-robin strategy")
    route_label: str | None = Field(None, description="the name a trained router artifact uses for this model")
    max_retries: int = Field(0, ge=0)
    first_token_timeout_s: float | None = Field(
        None, gt=0, description="a streamed request moves to the chain's next tier when this tier sends "
        "no first chunk within this many seconds (route reason `fallback:tierN:first_token_timeout=<model>`); "
        "unset: the tier's `timeout`. Never more than `timeout`")
    stream_idle_timeout_s: float | None = Field(
        None, gt=0, description="once a stream's first chunk has reached the client, a gap of more than "
        "this many seconds between chunks ends it with an OpenAI error event (code `stream_stalled`), "
        "charged for what was delivered; unset: the tier's `timeout`")
    mode: Literal["chat", "embedding"] = Field(
        "chat", description="what the model serves: chat (chat/completions, messages, responses) or "
        "embedding (/v1/embeddings only; never an `auto` candidate)")
    context_window: int | None = Field(
        None, gt=0, description="tokens of prompt plus completion the model takes; unset: LiteLLM's "
        "model info for litellm_params.model, else 32768 (admission holds a request's worst case "
        "within it)")
    max_output_tokens: int | None = Field(
        None, gt=0, description="the most tokens one completion may have; unset: LiteLLM's model info, "
        "else 4096 (what admission holds per choice when a request sets no max_tokens)")

    limits: ProviderLimits | None = Field(
        None, description="the provider's request/token limits per minute and per day (app/config.py "
        "ProviderLimits); a used-up model is skipped by its chain and by `auto`, and a request for it "
        "alone is a 429 with Retry-After at the window's reset. Needs accounts.require_keys")

    allow_client_params: list[str] = Field(
        default_factory=list, description="request-body parameters beyond the endpoint's OpenAI ones that "
        "a client may send to this model, passed on to LiteLLM (e.g. [api_base, api_key] lets a client "
        "bring its own endpoint and credentials, as LiteLLM proxy's client-side credentials switch). "
        "Off by default: any other field is a 400, since LiteLLM reads its own keyword arguments "
        "(api_base, api_key, custom_llm_provider, extra_headers, fallbacks, mock_response, metadata, ...) "
        "off the same call. A request carrying one of them takes LiteLLM's Router.acompletion path")

    @field_validator("allow_client_params")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not n.isidentifier() or n in ("model", "doka")]
        if bad:
            raise ValueError(f"not a parameter name a client may be allowed: {bad}")
        return names

    # capabilities (app/capabilities.py): unset = LiteLLM's model info where it knows the model,
    # vLLM's engine settings for local models, else unknown (counted as able); set = this wins
    supports_tools: bool | None = Field(None, description="takes `tools` (function calling)")
    supports_parallel_tool_calls: bool | None = Field(None, description="may answer with several tool calls at once")
    supports_vision: bool | None = Field(None, description="takes image parts")
    supports_response_schema: bool | None = Field(
        None, description="honours `response_format` json_schema / json_object (structured output)")
    supports_reasoning: bool | None = Field(
        None, description="takes `reasoning_effort` (Anthropic `thinking` maps to it; dropped for other models)")


class VLLMParams(_Strict):
    """A self-hosted model served by ray.serve.llm's LLMServer."""

    model_source: str
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    accelerator_type: str | None = None
    placement_group_config: dict[str, Any] | None = None
    runtime_env: dict[str, Any] | None = None
    lora_config: dict[str, Any] | None = None
    tool_call_parser: str | None = Field(
        None, description="vLLM's tool-call parser for this model (hermes, llama3_json, mistral, ...): sets "
        "`enable_auto_tool_choice` and `tool_call_parser` in its engine_kwargs, and marks the model able to "
        "take `tools`; unset (and not in engine_kwargs): the model gets no tool requests from `auto`")
    stream_batching_interval_ms: float | None = Field(
        None, ge=0, description="how long ray.serve.llm's LLMServer collects streamed tokens before "
        "sending them on as one batch (its `experimental_configs.stream_batching_interval_ms`); "
        "0 sends each token at once (lowest time to first token, more messages per token); "
        "unset: ray.serve.llm's default (50 ms, or RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS)")


# LiteLLM providers of servers the operator runs: zero USD unless model_info sets a price
SELF_HOSTED_PREFIXES = ("ollama/", "ollama_chat/", "hosted_vllm/")


class ModelEntry(_Strict):
    model_name: str = Field(min_length=1)
    provider: Literal["litellm", "vllm"] = "litellm"
    litellm_params: dict[str, Any] = Field(default_factory=dict)
    vllm: VLLMParams | None = None
    model_info: ModelInfo = Field(default_factory=ModelInfo)

    @model_validator(mode="after")
    def _check_provider(self) -> "ModelEntry":
        if self.provider == "vllm" and self.vllm is None:
            raise ValueError(f"model {self.model_name!r}: provider 'vllm' needs a `vllm:` section")
        if self.provider == "litellm" and "model" not in self.litellm_params:
            raise ValueError(f"model {self.model_name!r}: litellm_params.model is required")
        return self

    @property
    def self_hosted(self) -> bool:
        """Served on the operator's own machines: a `provider: vllm` model, or a LiteLLM model of an
        Ollama or vLLM server (`ollama/`, `ollama_chat/`, `hosted_vllm/`)."""
        model = str(self.litellm_params.get("model", ""))
        return self.provider == "vllm" or model.startswith(SELF_HOSTED_PREFIXES)

    @property
    def price(self) -> Price | None:
        """The configured price (app/pricing.py: the one rule the ledger, router and traces use)."""
        return price_of(self.model_info.input_cost_per_token, self.model_info.output_cost_per_token,
                        self.self_hosted)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD of one call at the configured prices; None when the model is unpriced."""
        price = self.price
        return price.cost(prompt_tokens, completion_tokens) if price is not None else None


class DeploymentOptions(_Strict):
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


class DeploymentsConfig(_Strict):
    ingress: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.5))
    router: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.25))
    egress: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_cpus=0.5))
    egress_translated: DeploymentOptions | None = Field(
        None, description="an egress of its own (deployment EgressTranslated) for the models that take "
        "LiteLLM's full Router.acompletion path (Gemini, Cohere, Bedrock, ...: ~8 ms of CPU a call): "
        "their load then never stalls pass-through and Anthropic calls on `egress`; unset: one egress for all")


class RouterConfig(_Strict):
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


class EgressConfig(_Strict):
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


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    max_body_bytes: int = Field(1_048_576, gt=0)
    auto_model: str = "auto"
    data_dir: str = ".doka"
    app_name: str = "doka"


class AccountsConfig(_Strict):
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


class MlflowTracingConfig(_Strict):
    """`observability.mlflow`: each gateway request becomes an MLflow trace (off when absent)."""

    tracking_uri: str = Field(..., description="MLflow tracking server URI (http://host:5000, sqlite:///..., "
                              "databricks); `os.environ/MLFLOW_TRACKING_URI` reads it from the environment")
    experiment: str = Field("doka-gateway", description="experiment the traces go to (created if missing)")
    enabled: bool = True
    queue_size: int = Field(10_000, ge=1, description="requests waiting to be sent; more are dropped (counted, "
                            "never blocking a request)")


class ObservabilityConfig(_Strict):
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


class CascadeConfig(_Strict):
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


@dataclass(frozen=True)
class _Lookups:
    by_name: dict[str, ModelEntry]
    chains: dict[str, tuple[str, ...]]
    public: tuple[str, ...]  # model, chain and cascade names (the auto name is read live from `server`)
    auto: tuple[str, ...]


class OIDCConfig(_Strict):
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


class ConsoleConfig(_Strict):
    oidc: OIDCConfig | None = Field(None, description="single sign-on for the console; off when absent")


class DokaConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    model_list: list[ModelEntry] = Field(min_length=1)
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict, description="named fallback chains, tried in order"
    )
    cascades: dict[str, CascadeConfig] = Field(
        default_factory=dict, description="named cascades (weak + verifier, strong on disagreement)"
    )
    router: RouterConfig = Field(default_factory=RouterConfig)
    egress: EgressConfig = Field(default_factory=EgressConfig)
    deployments: DeploymentsConfig = Field(default_factory=DeploymentsConfig)
    accounts: AccountsConfig = Field(default_factory=AccountsConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    @field_validator("model_list")
    @classmethod
    def _unique_names(cls, models: list[ModelEntry]) -> list[ModelEntry]:
        seen: set[str] = set()
        for m in models:
            if m.model_name in seen:
                raise ValueError(f"model_name {m.model_name!r} appears twice")
            seen.add(m.model_name)
        return models

    @model_validator(mode="after")
    def _check_references(self) -> "DokaConfig":
        names = {m.model_name for m in self.model_list}
        if self.server.auto_model in names:
            raise ValueError(f"server.auto_model {self.server.auto_model!r} clashes with a model_name")
        for chain_name, chain in self.fallbacks.items():
            if chain_name in names:
                raise ValueError(f"fallback chain {chain_name!r} clashes with a model_name")
            if not chain:
                raise ValueError(f"fallback chain {chain_name!r} is empty")
            for m in chain:
                if m not in names:
                    raise ValueError(f"fallback chain {chain_name!r} names unknown model {m!r}")
        chat = {m.model_name for m in self.model_list if m.model_info.mode == "chat"}
        for name, c in self.cascades.items():
            if name in names or name in self.fallbacks or name == self.server.auto_model:
                raise ValueError(f"cascade {name!r} clashes with a model, chain or the auto name")
            for role in ("weak", "verifier", "strong"):
                if getattr(c, role) not in chat:
                    raise ValueError(f"cascade {name!r}: {role} {getattr(c, role)!r} is not a chat model of model_list")
            if len({c.weak, c.verifier, c.strong}) < 3:
                raise ValueError(f"cascade {name!r}: weak, verifier and strong must be three different models")
        limited = [m.model_name for m in self.model_list if m.model_info.limits is not None]
        if limited and not self.accounts.require_keys:
            raise ValueError(f"model_info.limits on {', '.join(limited)} needs accounts.require_keys: true "
                             "(provider limits are counted by the accounts core all ingress replicas share)")
        novel = self.router.novel_cascade
        if novel is not None and novel not in self.cascades:
            raise ValueError(f"router.novel_cascade {novel!r} is not a cascade; cascades: "
                             f"{', '.join(self.cascades) or 'none'}")
        return self

    @cached_property
    def lookups(self) -> "_Lookups":
        """Hot-path tables, built on first use (`model`, `chain_for` were linear scans per request).

        A plain instance attribute once built (a pydantic private attribute costs ~1.7 us a read,
        more than the scan it replaces). Built from `model_list` and `fallbacks`, which nothing
        changes after load; call `reindex()` after editing them in place.
        """
        by_name = {m.model_name: m for m in self.model_list}
        chains: dict[str, tuple[str, ...]] = {name: tuple(chain) for name, chain in self.fallbacks.items()}
        for m in self.model_list:  # a model: itself, then the rest of the first chain that holds it
            chain = next((c for c in self.fallbacks.values() if m.model_name in c), None)
            chains[m.model_name] = tuple(chain[chain.index(m.model_name):]) if chain else (m.model_name,)
        for name, c in self.cascades.items():  # escalation: the strong model and its fallbacks
            chains[name] = chains[c.strong]
        return _Lookups(by_name, chains, (*by_name, *self.fallbacks, *self.cascades),
                        tuple(m.model_name for m in self.model_list
                              if not m.model_info.parallel and m.model_info.mode == "chat"))

    def reindex(self) -> None:
        """Forget the lookup tables (after changing `model_list` or `fallbacks` in place)."""
        self.__dict__.pop("lookups", None)

    # ---- lookups used on the hot path (cheap, no I/O) ----
    def model(self, name: str) -> ModelEntry | None:
        return self.lookups.by_name.get(name)

    def public_names(self) -> list[str]:
        """Names a client may send as `model`: every model, chain and cascade, and the auto name."""
        return [self.server.auto_model, *self.lookups.public]

    def auto_candidates(self) -> list[str]:
        return list(self.lookups.auto)

    def chain_for(self, name: str) -> list[str]:
        """The ordered models to try for a requested name.

        A chain name gives that chain; a cascade, its strong model's (what it escalates to). A
        model name gives the model, then the rest of the first chain that contains it (so
        `vllm-qwen` falls back along `vllm-qwen -> ...`).
        """
        chain = self.lookups.chains.get(name)
        return list(chain) if chain is not None else [name]

    def data_path(self, *parts: str) -> Path:
        return Path(os.path.expanduser(self.server.data_dir)).joinpath(*parts)


def load_config(path: str | os.PathLike[str]) -> DokaConfig:
    """Read and validate a config file; raises ConfigError naming the file and field."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"config file {p} not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    return parse_config(raw, source=str(p))


def parse_config(raw: Any, source: str = "<config>") -> DokaConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    try:
        return DokaConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{source}: invalid config"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from e


DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "default.yaml"
