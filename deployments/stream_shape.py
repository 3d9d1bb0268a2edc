"""LiteLLM Router streams in the shape OpenAI streams them.

The Router path (Ollama, Cohere, Bedrock, ...: LiteLLM's `CustomStreamWrapper`) can give each
chunk an id of its own, send an empty chunk after the finish reason, and put usage on a chunk
with an empty choice. OpenAI's shape, which clients read: one id, each choice's `finish_reason`
once on its last chunk, usage alone on a last chunk with no choices. The direct Anthropic/Gemini
path (deployments/translate.py) streams through it too (Gemini's parser says "stop" on every
chunk); pass-through forwards the provider's own OpenAI stream.
"""

from __future__ import annotations

from typing import Any, AsyncIterator


def _says_something(delta: dict[str, Any]) -> bool:
    return any(v not in (None, "", [], {}) for k, v in delta.items() if k != "role")


async def openai_chat_stream(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """`chunks` (chat.completion.chunk dicts) with one id, finish reasons held to the end, content-free
    chunks dropped, the role on the first delta, and usage on a last chunk without choices."""
    head: dict[str, Any] | None = None
    finishes: dict[int, str] = {}
    usage: dict[str, Any] | None = None
    first = True
    async for chunk in chunks:
        usage = chunk.pop("usage", None) or usage
        if head is None:
            head = {"id": chunk.get("id"), "object": "chat.completion.chunk", "created": chunk.get("created"),
                    "model": chunk.get("model")}
        choices = []
        for choice in chunk.get("choices") or []:
            choice = dict(choice)
            if finish := choice.pop("finish_reason", None):
                finishes[choice.get("index", 0)] = finish
            delta = choice.get("delta") or {}
            if _says_something(delta):
                if first:
                    delta = {**delta, "role": "assistant"}
                    first = False
                choices.append({**choice, "delta": delta, "finish_reason": None})
        if choices:
            yield {**chunk, "id": head["id"], "choices": choices}
    if head is None:
        return
    for index, finish in sorted((finishes or {0: "stop"}).items()):  # a stream always ends with one
        delta = {"role": "assistant"} if first else {}
        first = False
        yield {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    if usage:
        yield {**head, "choices": [], "usage": usage}
