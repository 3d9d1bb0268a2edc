"""Which request-body parameters may reach a provider: allow-lists, not deny-lists.

The known parameters of each OpenAI endpoint come from the installed openai SDK's own
request types (`openai.types.chat.completion_create_params` and friends), so a parameter
OpenAI adds arrives with an SDK upgrade and nothing else does. Everything else a body names
is refused with a 400 before any reservation or upstream call: LiteLLM reads many of its own
keyword arguments off the same call (`api_base`, `api_key`, `custom_llm_provider`,
`extra_headers`, `fallbacks`, `mock_response`, `metadata`, ...), so an unknown field could
choose where the gateway connects, which provider key it sends, or which model answers.

`metadata` is OpenAI's (stored completions) but also LiteLLM's own control object, so it is
not on the chat list. An operator may allow more per model (`model_info.allow_client_params`),
off by default. Ray-free and litellm-free: the ingress checks bodies with it, the egress builds
what it sends from it (defence in depth: a body that skipped the ingress still carries nothing
else).
"""

from __future__ import annotations

import typing
from typing import Any, Iterable

from app.errors import OpenAIError, bad_request

# LiteLLM keyword arguments that OpenAI also names but LiteLLM reads as its own control knobs.
_LITELLM_OWNED = frozenset({"metadata"})
# Named in the refusal so an operator reading it knows which switch unlocks it.
STEERING = frozenset({
    "api_base", "base_url", "api_key", "api_version", "custom_llm_provider", "headers", "extra_headers",
    "extra_body", "extra_query", "fallbacks", "context_window_fallbacks", "content_policy_fallbacks",
    "num_retries", "retries", "max_retries", "mock_response", "mock_testing_fallbacks", "metadata",
    "litellm_params", "model_list", "organization", "deployment_id", "timeout", "request_timeout",
    "aws_access_key_id", "aws_secret_access_key", "vertex_credentials", "vertex_project",
})


def _typed_dict_keys(*types: Any) -> frozenset[str]:
    keys: set[str] = set()
    for t in types:
        for member in typing.get_args(t) or (t,):
            keys |= set(getattr(member, "__required_keys__", ())) | set(getattr(member, "__optional_keys__", ()))
    return frozenset(keys)


def _known() -> dict[str, frozenset[str]]:
    from openai.types import completion_create_params, embedding_create_params
    from openai.types.chat import completion_create_params as chat_params
    from openai.types.responses import response_create_params

    return {
        "chat": _typed_dict_keys(chat_params.CompletionCreateParams) - _LITELLM_OWNED,
        "completion": _typed_dict_keys(completion_create_params.CompletionCreateParams),
        "embedding": _typed_dict_keys(embedding_create_params.EmbeddingCreateParams),
        # metadata on /v1/responses is echoed back in the response object, never sent upstream;
        # client_metadata (Codex CLI's thread and turn ids, which OpenAI's API takes) is read by nobody
        "responses": _typed_dict_keys(response_create_params.ResponseCreateParams) | {"client_metadata"},
    }


KNOWN: dict[str, frozenset[str]] = _known()
# Anthropic Messages bodies: app/anthropic_api.MessagesRequest is the allow-list itself
# (extra="forbid", every field of the current Messages API), so it has no list here.
DOKA_EXTENSION = "doka"  # doka's own routing options: read by the ingress, never sent upstream


def unknown_fields(kind: str, body: dict[str, Any], extra: Iterable[str] = ()) -> list[str]:
    """The top-level fields of `body` that `kind`'s API does not define (nor the operator allowed)."""
    known = KNOWN[kind]
    allowed = set(extra)
    return sorted(k for k in body if k not in known and k != DOKA_EXTENSION and k not in allowed)


def refuse_unknown(kind: str, body: dict[str, Any], extra: Iterable[str] = ()) -> None:
    """Raise a 400 (OpenAI's shape) naming every field `kind`'s API does not define."""
    bad = unknown_fields(kind, body, extra)
    if not bad:
        return
    steering = [k for k in bad if k in STEERING]
    why = (f" ({', '.join(steering)} would choose where or how the provider is called; an operator may "
           "allow such a parameter for a model with `model_info.allow_client_params`)") if steering else ""
    raise OpenAIError(400, f"Unrecognized request argument(s): {', '.join(bad)}{why}",
                      type="invalid_request_error", param=bad[0], code="unknown_parameter")


def provider_body(kind: str, body: dict[str, Any], extra: Iterable[str] = ()) -> dict[str, Any]:
    """`body` with only the parameters that may reach the provider (`kind`'s API + `extra`)."""
    known = KNOWN[kind]
    allowed = set(extra)
    return {k: v for k, v in body.items() if k in known or k in allowed}


__all__ = ["KNOWN", "STEERING", "bad_request", "provider_body", "refuse_unknown", "unknown_fields"]
