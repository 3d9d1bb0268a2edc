"""Each model's context window and output limit, for holding a request's worst case at admission.

The config's `model_info.context_window` / `model_info.max_output_tokens` win; unset, LiteLLM's
bundled model map (offline: LITELLM_LOCAL_MODEL_COST_MAP) answers for models it knows; else the
defaults below. Resolved once per ingress replica, never per request.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

log = logging.getLogger("doka.accounts")
DEFAULT_CONTEXT_WINDOW = 32_768
DEFAULT_MAX_OUTPUT_TOKENS = 4_096


class ModelLimits(NamedTuple):
    context_window: int
    max_output_tokens: int


def _litellm_info(litellm_model: str | None) -> dict[str, Any]:
    if not litellm_model:
        return {}
    try:
        import litellm

        return dict(litellm.get_model_info(litellm_model) or {})
    except Exception:  # not in LiteLLM's map (a self-hosted or mock model): config or defaults
        return {}


def limits_of(entry: Any) -> ModelLimits:
    """One `app.config.ModelEntry`'s limits: config, else LiteLLM's model info, else defaults."""
    info = entry.model_info
    ctx, out = info.context_window, info.max_output_tokens
    if ctx is None or out is None:
        known = _litellm_info((entry.litellm_params or {}).get("model"))
        ctx = ctx or known.get("max_input_tokens") or known.get("max_tokens") or DEFAULT_CONTEXT_WINDOW
        out = out or known.get("max_output_tokens") or DEFAULT_MAX_OUTPUT_TOKENS
    return ModelLimits(int(ctx), int(min(out, ctx)))


def limits_by_model(cfg: Any) -> dict[str, ModelLimits]:
    """Every configured model's limits, by public name."""
    return {m.model_name: limits_of(m) for m in cfg.model_list}


def widest(limits: dict[str, ModelLimits]) -> ModelLimits:
    """The limits to hold for a name that may reach any model (`auto`, a cascade)."""
    if not limits:
        return ModelLimits(DEFAULT_CONTEXT_WINDOW, DEFAULT_MAX_OUTPUT_TOKENS)
    return ModelLimits(max(v.context_window for v in limits.values()),
                       max(v.max_output_tokens for v in limits.values()))
