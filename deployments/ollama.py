"""What doka tells LiteLLM about its Ollama models, so LiteLLM never asks an Ollama server.

Why: LiteLLM prices and describes an `ollama/` or `ollama_chat/` model it has no cost-map entry
for by POSTing to `/api/show` of an Ollama server at its *default* address (localhost:11434, not
the model's `api_base`), synchronously, from its logging of every call (twice a request, measured
on litellm 1.106): a blocking HTTP call on the egress's event loop, which waits out a connect
timeout where that address drops packets. Registering each configured Ollama model in LiteLLM's
cost map (price from `model_info`, else 0: self-hosted) makes LiteLLM treat it as known.
"""

from __future__ import annotations

from typing import Any

from app.capabilities import OLLAMA_PREFIXES
from app.config import DokaConfig, ModelEntry


def cost_map_entry(entry: ModelEntry) -> dict[str, Any]:
    """LiteLLM's model info for one Ollama model, from doka's config only."""
    mi = entry.model_info
    provider = str(entry.litellm_params["model"]).partition("/")[0]
    info: dict[str, Any] = {"litellm_provider": provider, "mode": "chat",
                            "input_cost_per_token": mi.input_cost_per_token or 0.0,
                            "output_cost_per_token": mi.output_cost_per_token or 0.0}
    if mi.context_window:
        info.update(max_tokens=mi.context_window, max_input_tokens=mi.context_window)
    if mi.max_output_tokens:
        info["max_output_tokens"] = mi.max_output_tokens
    if mi.supports_tools is not None:
        info["supports_function_calling"] = mi.supports_tools
    return info


def ollama_cost_map(cfg: DokaConfig) -> dict[str, dict[str, Any]]:
    """`{litellm model: info}` for every configured Ollama model."""
    return {str(m.litellm_params["model"]): cost_map_entry(m) for m in cfg.model_list
            if m.provider == "litellm" and str(m.litellm_params.get("model", "")).startswith(OLLAMA_PREFIXES)}


def register_ollama_models(cfg: DokaConfig) -> list[str]:
    """Add the config's Ollama models to LiteLLM's cost map (in this process); their names."""
    entries = ollama_cost_map(cfg)
    if entries:
        import litellm

        litellm.register_model(entries)
    return sorted(entries)
