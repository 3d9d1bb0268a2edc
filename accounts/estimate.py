"""Token estimates for reservations and for streams whose upstream sends no usage.

Deliberately a cheap heuristic rather than a tokenizer: it runs on every request and needs no
download. Reservations err high (3 characters per token, 8 tokens of overhead per message, as
chat templates add) because a reservation below the actual usage is what would let concurrent
requests overspend a quota; the reservation is replaced by the real usage at settle.
"""

from __future__ import annotations

import math
from typing import Any

CHARS_PER_TOKEN = 4  # for counting delivered stream text (charged, so not inflated)
RESERVE_CHARS_PER_TOKEN = 3
PER_MESSAGE = 8
REPLY_PRIMING = 3
DEFAULT_MAX_OUTPUT_TOKENS = 4096  # a model's output limit when neither config nor LiteLLM knows it


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def count_tokens(text: str | None, chars_per_token: int = CHARS_PER_TOKEN) -> int:
    return math.ceil(len(text) / chars_per_token) if text else 0


def prompt_tokens(body: dict[str, Any], chars_per_token: int = CHARS_PER_TOKEN, per_message: int = 4) -> int:
    """Estimate prompt tokens of a chat (`messages`) or completion (`prompt`) body."""
    if isinstance(body.get("messages"), list):
        return REPLY_PRIMING + sum(per_message + count_tokens(_content_text(m.get("content")), chars_per_token)
                                   for m in body["messages"] if isinstance(m, dict))
    prompt = body.get("prompt", body.get("input"))  # completions, or embeddings
    if isinstance(prompt, list):
        return sum(count_tokens(p, chars_per_token) for p in prompt if isinstance(p, str))
    return count_tokens(prompt if isinstance(prompt, str) else None, chars_per_token)


def reservation(body: dict[str, Any] | None, max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
                context_window: int | None = None) -> int:
    """The request's worst case: prompt estimate + (max_tokens, else the model's output limit) x n.

    Each choice's completion is bounded by what the context leaves after the prompt. No cap: a
    hold below what the request can really cost is what let concurrent requests overspend.
    """
    body = body or {}
    prompt = prompt_tokens(body, RESERVE_CHARS_PER_TOKEN, PER_MESSAGE)
    if "input" in body and "messages" not in body and "prompt" not in body:
        return prompt  # embeddings: input tokens only
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        max_tokens = max_output_tokens
    if context_window is not None:
        max_tokens = min(max_tokens, max(context_window - prompt, 1))
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return prompt + max_tokens * n


class StreamMeter:
    """Counts what a stream actually delivered, preferring the upstream's final `usage`.

    Feed every chunk dict to `observe`; `usage()` gives the tokens to charge, also for a stream
    cut off mid-way (only the delivered text is counted then).
    """

    def __init__(self, body: dict[str, Any] | None = None) -> None:
        self.prompt_estimate = prompt_tokens(body or {})
        self.delivered_chars = 0
        self.reported: dict[str, int] | None = None
        self.model: str | None = None

    def observe(self, chunk: dict[str, Any]) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.reported = {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                             "completion_tokens": int(usage.get("completion_tokens") or 0)}
        self.model = chunk.get("model") or self.model
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if text is None:
                text = choice.get("text")  # completions stream
            if isinstance(text, str):
                self.delivered_chars += len(text)

    def usage(self) -> dict[str, int]:
        if self.reported is not None:
            return dict(self.reported)
        return {"prompt_tokens": self.prompt_estimate,
                "completion_tokens": math.ceil(self.delivered_chars / CHARS_PER_TOKEN)}


def charged_usage(usage: dict[str, Any] | None, stream: bool, meter: StreamMeter | None) -> dict[str, int] | None:
    """The gateway's one cut-off rule: a stream whose upstream sent no usage (cut off, or a
    provider that never reports it) is charged what it delivered, counted by its meter. Returns
    those tokens, or None when the upstream's own usage stands (or nothing was metered).
    Used by the ledger settle, the cascade's sum and the provider-limit holds alike."""
    usage = usage or {}
    if not stream or meter is None or usage.get("prompt_tokens") or usage.get("completion_tokens"):
        return None
    return meter.usage()

