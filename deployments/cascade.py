"""The pieces of a cascade (`cascades:` in the config) that need no Ray: do two answers agree, and
an answer replayed as the stream a client asked for.

A cascade asks its weak and verifier models the same request at once and returns the weak answer
when the two agree; otherwise the strong model answers. On RouterBench, escalating on
disagreement holds on tasks nothing was trained on, where routing on the prompt does not
(docs/benchmarks.md, sixth pass): the signal is in the answers, not the prompt.
"""

from __future__ import annotations

import json
import re
from typing import Any, AsyncIterator

_SPACE = re.compile(r"\s+")
_EDGES = " \t\n\"'`.,;:!?()[]{}*"


def answer_key(result: dict[str, Any]) -> str:
    """What two answers must share to agree: the first choice's text (chat or completion),
    case-folded, whitespace collapsed, quotes and punctuation at the ends dropped, plus its tool
    calls (name and arguments)."""
    choices = result.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    text = message.get("content") if "message" in choice else choice.get("text")
    calls = [(c.get("function") or {}).get("name", "") + (c.get("function") or {}).get("arguments", "")
             for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    norm = _SPACE.sub(" ", str(text or "")).strip(_EDGES).casefold()
    return norm + ("\x00" + json.dumps(calls) if calls else "")


def agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two answers agree when their keys match; two empty answers never do (nothing was said)."""
    ka, kb = answer_key(a), answer_key(b)
    return bool(ka) and ka == kb


async def replay(result: dict[str, Any], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    """A complete chat or text completion as the chunks a streaming upstream would have sent:
    the content, a finish chunk, and the usage chunk when the client asked for it."""
    chat = result.get("object") == "chat.completion"
    base = {"id": result.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": result.get("created"), "model": result.get("model")}
    for choice in result.get("choices") or []:
        i = choice.get("index", 0)
        if chat:
            msg = choice.get("message") or {}
            delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
            if msg.get("tool_calls"):
                delta["tool_calls"] = [{**c, "index": j} for j, c in enumerate(msg["tool_calls"])]
            yield {**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}
            yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
        else:
            yield {**base, "choices": [{"index": i, "text": choice.get("text") or "",
                                        "finish_reason": choice.get("finish_reason")}]}
    if include_usage and result.get("usage"):
        yield {**base, "choices": [], "usage": result["usage"]}
