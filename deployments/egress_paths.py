"""Which path and which deployment serve each external (`provider: litellm`) model.

Three call paths (deployments/egress.py): pass-through for providers that speak OpenAI's wire
format, a direct LiteLLM transformation for Anthropic and Gemini chat, and LiteLLM's full
`Router.acompletion` for the rest. Where a model is called from follows: models on the Router
path go to the EgressTranslated deployment when `deployments.egress_translated` is set, the others
to the Egress deployment (`egress.placement: deployment`) or to the ingress replicas themselves.

Free of Ray and litellm imports: app/placement.py decides each model's deployment from it for
the graph, the Serve config, the KubeRay render and the ingress alike.
"""

from __future__ import annotations

from typing import Any

# LiteLLM provider prefixes whose HTTP API is OpenAI's own: safe to pass bodies through.
PASSTHROUGH_PROVIDERS = {"openai", "hosted_vllm", "openai_like", "vllm_openai", "llamafile", "lm_studio"}
# Providers whose chat calls skip Router.acompletion (deployments/translate.py).
DIRECT_PROVIDERS = {"anthropic", "gemini"}

def is_passthrough(params: dict[str, Any]) -> bool:
    """True when the request body can go to the provider unchanged (OpenAI wire format + api_base)."""
    provider, _, _ = str(params.get("model", "")).partition("/")
    return provider in PASSTHROUGH_PROVIDERS and bool(params.get("api_base")) and "mock_response" not in params


def uses_router_path(params: dict[str, Any]) -> bool:
    """True for a deployment only LiteLLM's full Router.acompletion serves (not pass-through, not
    a direct translation): the CPU-heavy calls `deployments.egress_translated` isolates."""
    provider = str(params.get("model", "")).partition("/")[0]
    return not is_passthrough(params) and (provider not in DIRECT_PROVIDERS or "mock_response" in params)
