"""The OpenAI mock's answers beyond plain text: embeddings and tool calls.

Kept apart from load/mock_upstream.py (which routes, paces and injects faults) so each answer
shape lives in one place. Both are deterministic, so tests can compare what came back:
  * embeddings: a unit vector per input seeded by (model, text), `float` or `base64`
    (little-endian float32, as OpenAI sends it), `dimensions` honoured, usage.prompt_tokens;
  * tool calls: when the request offers `tools` and either forces one (`tool_choice` required
    or a named function) or its last message is a user turn that asks for one (mentions
    "tool" or "weather"), the answer is a call of that tool with arguments that satisfy the
    tool's top-level JSON-schema properties; after a `tool` result it answers in text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
from typing import Any

from load.mock_core import sample_args

EMBED_DIMS = 64  # default vector length (OpenAI's models are longer; `dimensions` overrides)


def embed(model: str, text: str, dims: int = EMBED_DIMS) -> list[float]:
    """A deterministic unit vector for (model, text): the same input always embeds the same."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{text}".encode()).digest()[:8], "little")
    rng = random.Random(seed)
    v = [rng.uniform(-1, 1) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


def embeddings_payload(model: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's embeddings answer for `body` (None: `input` is not a string, tokens or a list of either)."""
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
        items = raw
    else:
        return None
    dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) and body["dimensions"] > 0 else EMBED_DIMS
    fmt = body.get("encoding_format") or "float"
    data, tokens = [], 0
    for i, item in enumerate(items):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += max(1, len(item) if isinstance(item, list) else len(item.split()))
        vec = embed(model, text, dims)
        value: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if fmt == "base64" else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool call this chat request should get (an OpenAI `tool_calls` entry), or None for text."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    messages = body.get("messages") or []
    if not tools or not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return None
    choice = body.get("tool_choice")
    if choice == "none":
        return None
    fn = tools[0]["function"]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        fn = next((t["function"] for t in tools if t["function"].get("name") == choice["function"].get("name")), fn)
    content = messages[-1].get("content")
    text = content if isinstance(content, str) else json.dumps(content)
    if not (choice == "required" or isinstance(choice, dict) or "tool" in text.lower() or "weather" in text.lower()):
        return None
    seed = hashlib.sha256(text.encode()).hexdigest()[:12]
    return {"id": f"call_{seed}", "type": "function",
            "function": {"name": str(fn.get("name", "tool")), "arguments": json.dumps(sample_args(fn.get("parameters")))}}


def tool_call_chunks(call: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """A tool call as OpenAI streams it: id + name first, then the arguments in two pieces."""
    args = call["function"]["arguments"]
    half = len(args) // 2
    deltas = [{"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                                   "function": {"name": call["function"]["name"],
                                                                                "arguments": ""}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": args[:half]}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": args[half:]}}]}]
    return [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
