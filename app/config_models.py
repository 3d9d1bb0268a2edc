"""The config's model list (LiteLLM's `model_list` shape): one `ModelEntry` per model, with its
`model_info` (prices, capabilities, provider limits) and vLLM engine settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from app.config_base import StrictModel
from app.pricing import Price, price_of


class ProviderLimits(StrictModel):
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


class ModelInfo(StrictModel):
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
        None, description="the provider's request/token limits per minute and per day (app/config_models.py "
        "ProviderLimits); a used-up model is skipped by its chain and by `auto`, and a request for it "
        "alone is a 429 with Retry-After at the window's reset. Needs accounts.require_keys")

    queue_limit: int | None = Field(
        None, gt=0, description="`provider: vllm` only: while this many requests (or more) wait in the "
        "tier's vLLM scheduler queue (vLLM's own num_waiting_reqs, read every 0.5 s; deployments/tier_load.py), "
        "fallback chains skip the tier (route reason `;skipped=<model>:queue_full`) and `auto` leaves it out "
        "of its candidates; a request with no other tier left still queues there")

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
        None, description="takes `reasoning_effort` (Anthropic `thinking` and Responses `reasoning.effort` map to it; dropped for other models)")


class VLLMParams(StrictModel):
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
    start_retries: int | None = Field(
        None, ge=1, description="how many failed replica starts Serve allows before it marks this tier's "
        "application DEPLOY_FAILED (the deployment's `max_constructor_retry_count`); each try loads vLLM again "
        "(~25 s on a small CPU box), so 1 reports broken weights at once; unset: Serve's default, 3 per replica "
        "(rides out a transient failure such as a node still pulling weights)")


# LiteLLM providers of servers the operator runs: zero USD unless model_info sets a price
SELF_HOSTED_PREFIXES = ("ollama/", "ollama_chat/", "hosted_vllm/")


class ModelEntry(StrictModel):
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
        if self.model_info.queue_limit is not None and self.provider != "vllm":
            raise ValueError(f"model {self.model_name!r}: model_info.queue_limit needs `provider: vllm` "
                             "(the load is vLLM's own scheduler queue)")
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
