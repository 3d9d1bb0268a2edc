"""Scripted tool-use turns for the OpenAI mock: an agent loop with a model that behaves.

`MockSettings.tool_script` maps a model name to `{"name": TOOL, "arguments": {...}, "answer":
PREFIX}`: while the conversation's last message is the user's (and the request offers TOOL),
the model calls TOOL with those arguments; once the last message is that tool's result, it
answers in text: PREFIX followed by the result it was given, so a test can see that the
model's next turn saw the tool_result (Claude Code's agent loop, tests/test_agents_gateway.py).
Without `name`, every user turn gets the text `answer` (never the mock's default tool call).
`{"refuse_tools": MESSAGE}`: a request offering tools gets a 400 with MESSAGE, as vLLM started
without a tool parser answers (a capability refusal the gateway must skip, not return).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def scripted_turn(script: dict[str, Any] | None, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(tool call, None), (None, answer text), or (None, None) when the script does not apply."""
    messages = body.get("messages") or []
    if not script or not messages or not isinstance(messages[-1], dict):
        return None, None
    last = messages[-1]
    if last.get("role") == "tool":
        return None, f"{script.get('answer', 'The tool returned:')} {_text(last.get('content'))}"
    if last.get("role") != "user":
        return None, None
    if not script.get("name"):  # no tool in the script: a plain text answer
        return None, str(script.get("answer", ""))
    names = {(t.get("function") or {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    if script["name"] not in names:
        return None, None
    seed = hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {"id": f"call_{seed}", "type": "function",
            "function": {"name": script["name"], "arguments": json.dumps(script.get("arguments") or {})}}, None


def scripted_refusal(script: dict[str, Any] | None, body: dict[str, Any]) -> str | None:
    """The 400 message for a request offering tools to a model scripted to refuse them."""
    if script and script.get("refuse_tools") and body.get("tools"):
        return str(script["refuse_tools"])
    return None
