"""What each model can serve, what a request needs, and which candidates are left.

Why: `auto`, chains and cascades used to pick by quality and cost only, so a tool-calling
request could land on a local model started without a tool parser and come back as vLLM's 400.
Each model now declares its capabilities (`resolve`: the config's `model_info.supports_*`,
`context_window`, `max_output_tokens` where set; else LiteLLM's model info for a model it knows
(never looked up for an Ollama model: LiteLLM would ask a server for it); else vLLM's engine
settings for a local model), each request states its needs (`needs_of`, read
from the OpenAI chat body every endpoint is translated to), and the ingress keeps only the
candidates and tiers that can serve it (`missing`). Unknown counts as able: only a capability
known to be absent filters a model out. Ray-free, so the rules have fast unit tests.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from accounts.estimate import prompt_tokens
from app.config import DokaConfig, ModelEntry

logger = logging.getLogger("ray.serve")

# the names a request's needs are reported by (route reason, 400 message)
TOOLS, PARALLEL, VISION, JSON, CONTEXT = "tools", "parallel_tool_calls", "vision", "response_format", "context_window"
OLLAMA_PREFIXES = ("ollama/", "ollama_chat/")


@dataclass(frozen=True)
class Capabilities:
    """One model's capabilities; None: unknown (treated as able)."""

    tools: bool | None = None
    parallel_tool_calls: bool | None = None
    vision: bool | None = None
    response_schema: bool | None = None
    reasoning: bool | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Needs:
    """What one request needs of the model that answers it."""

    tools: bool = False
    parallel_tool_calls: bool = False
    vision: bool = False
    response_schema: bool = False
    prompt_tokens: int = 0

    def any(self) -> bool:
        return self.tools or self.vision or self.response_schema or self.parallel_tool_calls or self.prompt_tokens > 0


def _litellm_info(model: str) -> dict[str, Any] | None:
    """LiteLLM's model info (its offline cost map with LITELLM_LOCAL_MODEL_COST_MAP=True); None if unknown."""
    try:
        import litellm

        return dict(litellm.get_model_info(model=model))
    except Exception:  # litellm raises for models it does not know
        return None


def _vllm_capabilities(entry: ModelEntry) -> Capabilities:
    """A local model's capabilities from its engine settings: tools only with a tool parser
    (vLLM answers 400 to `tool_choice: auto` otherwise), the context from `max_model_len`."""
    v = entry.vllm
    kwargs = v.engine_kwargs if v is not None else {}
    tools = bool(v is not None and (v.tool_call_parser or (kwargs.get("enable_auto_tool_choice")
                                                           and kwargs.get("tool_call_parser"))))
    window = kwargs.get("max_model_len")
    return Capabilities(tools=tools, parallel_tool_calls=tools, vision=False, response_schema=True,
                        reasoning=bool(kwargs.get("reasoning_parser")),
                        context_window=int(window) if isinstance(window, int) else None)


def _from_litellm(info: dict[str, Any]) -> Capabilities:
    def flag(key: str) -> bool | None:
        value = info.get(key)
        return bool(value) if value is not None else None

    window = info.get("max_input_tokens") or info.get("max_tokens")
    out = info.get("max_output_tokens")
    return Capabilities(tools=flag("supports_function_calling"),
                        parallel_tool_calls=flag("supports_parallel_function_calling"),
                        vision=flag("supports_vision"), response_schema=flag("supports_response_schema"),
                        reasoning=flag("supports_reasoning"),
                        context_window=int(window) if isinstance(window, int) else None,
                        max_output_tokens=int(out) if isinstance(out, int) else None)


def resolve(entry: ModelEntry, lookup: Callable[[str], dict[str, Any] | None] = _litellm_info) -> Capabilities:
    """A model's capabilities: config fields that are set win; LiteLLM's info (a `provider:
    litellm` model it knows) or vLLM's engine settings fill the rest; else unknown."""
    if entry.provider == "vllm":
        base = _vllm_capabilities(entry)
    else:
        model = str(entry.litellm_params.get("model", ""))
        # LiteLLM's info for an Ollama model is a POST to an Ollama server's /api/show at LiteLLM's
        # default address (not this model's api_base), made while the graph is built: declare instead
        info = None if model.startswith(OLLAMA_PREFIXES) else lookup(model)
        base = _from_litellm(info) if info else Capabilities()
    mi = entry.model_info
    declared = {"tools": mi.supports_tools, "parallel_tool_calls": mi.supports_parallel_tool_calls,
                "vision": mi.supports_vision, "response_schema": mi.supports_response_schema,
                "reasoning": mi.supports_reasoning, "context_window": mi.context_window,
                "max_output_tokens": mi.max_output_tokens}
    merged = {k: (v if v is not None else getattr(base, k)) for k, v in declared.items()}
    if merged["parallel_tool_calls"] is None and merged["tools"] is False:
        merged["parallel_tool_calls"] = False
    return Capabilities(**merged)


def resolve_all(cfg: DokaConfig, lookup: Callable[[str], dict[str, Any] | None] = _litellm_info) -> dict[str, dict]:
    """Every chat model's capabilities as plain dicts (what the graph builder hands the ingress)."""
    return {m.model_name: resolve(m, lookup).as_dict() for m in cfg.model_list if m.model_info.mode == "chat"}


def _has_image(messages: Any) -> bool:
    for m in messages if isinstance(messages, list) else ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("image_url", "input_image")
                                             for p in content):
            return True
    return False


def needs_of(body: dict[str, Any]) -> Needs:
    """A chat body's needs: tools offered (and not `tool_choice: none`), an explicit
    `parallel_tool_calls: true`, image parts, a JSON `response_format`, and its prompt size."""
    tools = bool(body.get("tools")) and body.get("tool_choice") != "none"
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    return Needs(tools=tools, parallel_tool_calls=tools and body.get("parallel_tool_calls") is True,
                 vision=_has_image(body.get("messages")), response_schema=fmt_type in ("json_schema", "json_object"),
                 prompt_tokens=prompt_tokens(body) if body.get("messages") else 0)


def missing(caps: dict[str, Any] | None, needs: Needs) -> list[str]:
    """The needs `caps` cannot meet (known absent or too small); empty: the model can serve it."""
    if not caps:
        return []
    out = []
    if needs.tools and caps.get("tools") is False:
        out.append(TOOLS)
    if needs.parallel_tool_calls and caps.get("parallel_tool_calls") is False:
        out.append(PARALLEL)
    if needs.vision and caps.get("vision") is False:
        out.append(VISION)
    if needs.response_schema and caps.get("response_schema") is False:
        out.append(JSON)
    window = caps.get("context_window")
    if window is not None and needs.prompt_tokens > window:
        out.append(CONTEXT)
    return out


def split(models: list[str], caps: dict[str, dict], needs: Needs) -> tuple[list[str], dict[str, list[str]]]:
    """`models` cut to those that can serve `needs`, in order, and why each other one was left out."""
    if not needs.any():
        return list(models), {}
    kept, dropped = [], {}
    for m in models:
        lacks = missing(caps.get(m), needs)
        if lacks:
            dropped[m] = lacks
        else:
            kept.append(m)
    return kept, dropped


def describe(dropped: dict[str, list[str]]) -> str:
    """`mock-small:tools+vision,local-tiny:context_window` (route reasons, headers: ASCII only)."""
    return ",".join(f"{m}:{'+'.join(lacks)}" for m, lacks in dropped.items())


def for_model(body: dict[str, Any], caps: dict[str, Any] | None) -> dict[str, Any]:
    """The body one tier gets: `max_tokens` capped to the model's most output tokens, and
    `reasoning_effort` (from Anthropic `thinking`) only for a model known to reason."""
    if not caps:
        caps = {}
    changes: dict[str, Any] = {}
    cap = caps.get("max_output_tokens")
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if cap and isinstance(value, int) and value > cap:
            changes[key] = cap
    drop = "reasoning_effort" in body and caps.get("reasoning") is not True
    if not changes and not drop:
        return body
    out = {**body, **changes}
    if drop:
        del out["reasoning_effort"]
    return out


# a provider's 400 that says the model cannot do what was asked (skip the tier, not the request)
_REFUSALS = re.compile(
    r"tool choice requires|enable-auto-tool-choice|tool-call-parser|does not support (tools|function|image|vision"
    r"|multimodal|response_format|json|parameters)|tools? (are|is) not supported|not a multimodal model|image input"
    r"|maximum context length|context length|context_length_exceeded|prompt is too long|too many tokens"
    r"|response_format.*not supported|json_schema.*not supported|max_tokens.*(too large|must be)", re.IGNORECASE)


def is_capability_refusal(status: int, message: str) -> bool:
    """A tier's client error that is about the model's capabilities, not the request's validity."""
    return status in (400, 413, 422) and bool(_REFUSALS.search(message or ""))
