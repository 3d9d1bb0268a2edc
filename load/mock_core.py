"""What every mock provider shares: settings, counters, fault injection and stream pacing.

The OpenAI mock (load/mock_upstream.py) and the provider-format mocks (load/mock_anthropic.py,
load/mock_gemini.py, load/mock_cohere.py) all run in one Starlette app on one port, so one
`/_mock/state` endpoint changes latency, chunking and per-model faults for all of them, and
each one only writes its own wire format on top of `gate` and `paced`.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections import Counter
from typing import Any, AsyncIterator, Iterable

from pydantic import BaseModel, Field

# "none", an HTTP status the provider answers with, "timeout" (never answers), "drop" (the
# connection breaks mid-stream), "stall" (a stream sends its first chunk, then nothing, the
# connection open) or "silent" (a stream's headers go out, then nothing). 529 is Anthropic's
# "overloaded". A plain (non-streamed) request with "stall" or "silent" never answers.
HTTP_FAULTS = ("400", "401", "429", "500", "502", "503", "529")
STALL_FAULTS = ("stall", "silent")
FAULTS = ("none", *HTTP_FAULTS, "timeout", "drop", *STALL_FAULTS)
STALL_S = 3600.0  # how long a stalled stream (or an unanswered request) waits: longer than any test


class MockSettings(BaseModel):
    """Behaviour of the mock; `faults` maps a model name (or `*`) to one of FAULTS."""

    latency_ms: float = Field(50.0, ge=0)
    chunks: int = Field(8, ge=1, description="content chunks per streamed answer")
    chunk_interval_ms: float = Field(0.0, ge=0)
    faults: dict[str, str] = Field(default_factory=dict)
    fault_rate: float = Field(1.0, ge=0, le=1, description="share of a model's requests a configured fault hits")
    answers: dict[str, str] = Field(default_factory=dict,
                                    description="a model's fixed answer text instead of the echo (OpenAI mock)")
    tool_script: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="a model's scripted tool-use turn (load/mock_script.py, OpenAI mock)")

    def fault_for(self, model: str, credit: dict[str, float]) -> str:
        """The fault for this request of `model`.

        With `fault_rate` < 1 the fault hits that share of the model's requests, spread evenly
        and exactly (error diffusion over `credit`, the caller's per-model carry), not by a coin:
        48 requests at 10% see 4 or 5 faults on every run, never 0, so a fault test cannot pass
        because nothing was injected.
        """
        fault = self.faults.get(model, self.faults.get("*", "none"))
        if fault == "none" or self.fault_rate >= 1.0:
            return fault
        carry = credit.get(model, 0.5) + self.fault_rate  # 0.5: the first hit after half a period
        fire = carry >= 1.0
        credit[model] = carry - 1.0 if fire else carry
        return fault if fire else "none"


class MockState:
    """Settings plus counters and the last request body per model; one per server process."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.last_body: dict[str, Any] = {}
        self.fault_credit: dict[str, float] = {}  # per model, for MockSettings.fault_for

    def snapshot(self) -> dict[str, Any]:
        return {
            "settings": self.settings.model_dump(),
            "counts": dict(self.counts),
            "by_model": dict(self.by_model),
        }

    def reset_counts(self) -> None:
        self.counts.clear()
        self.by_model.clear()
        self.last_body.clear()
        self.fault_credit.clear()

    async def gate(self, model: str, body: Any, api: str = "openai", stream: bool | None = None) -> str:
        """Count and record one request, then wait out latency and faults.

        Returns the fault that applies: an HTTP_FAULTS status the caller answers with in its
        own error shape, "drop" / "stall" / "silent" (for `paced`) or "none". A "timeout" never
        returns, nor does a stall fault on a plain request (`stream`: whether the answer is
        streamed; unset: the body's `stream` flag).
        """
        self.counts["requests"] += 1
        if api != "openai":
            self.counts[f"api_{api}"] += 1
        self.by_model[model] += 1
        self.last_body[model] = body
        s = self.settings
        fault = s.fault_for(model, self.fault_credit)
        if fault in HTTP_FAULTS:
            self.counts[f"fault_{fault}"] += 1
            return fault
        if stream is None:
            stream = isinstance(body, dict) and bool(body.get("stream"))
        if fault in STALL_FAULTS and not stream:
            fault = "timeout"
        if fault == "timeout":
            self.counts["fault_timeout"] += 1
            try:
                await asyncio.sleep(STALL_S)
            finally:
                self.counts["timeout_abandoned"] += 1
        if s.latency_ms:
            await asyncio.sleep(s.latency_ms / 1000)
        return fault

    async def paced(self, events: Iterable[bytes], fault: str | bool) -> AsyncIterator[bytes]:
        """Send stream events with the configured pacing; counts a stream the client left as cancelled.

        `fault` "drop" (or True): break the connection halfway (after at least one event), as a
        failing provider does; "stall": send the first event, then nothing (connection open);
        "silent": send nothing at all (the headers are out). Other values: no fault.
        """
        events = list(events)
        drop = fault is True or fault == "drop"
        stall_at = {"stall": 1, "silent": 0}.get(fault) if isinstance(fault, str) else None
        interval = self.settings.chunk_interval_ms / 1000
        self.counts["streams_started"] += 1
        finished = False
        try:
            for i, event in enumerate(events):
                if stall_at is not None and i == stall_at:
                    self.counts[f"fault_{fault}"] += 1
                    await asyncio.sleep(STALL_S)  # until the client gives up (cancelled below)
                if drop and i == max(1, len(events) // 2):
                    self.counts["fault_drop"] += 1
                    finished = True
                    raise ConnectionAbortedError("mock fault: connection dropped mid-stream")
                yield event
                if interval:
                    await asyncio.sleep(interval)
            finished = True
            self.counts["streams_completed"] += 1
        finally:
            if not finished:
                self.counts["streams_cancelled"] += 1


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def answer_words(model: str, prompt: str, n: int) -> list[str]:
    """The mock's answer, `n` words (one per stream chunk), naming the model and the prompt."""
    base = f"mock answer from {model} to: {prompt[:40]}".split()
    words = (base * (n // max(len(base), 1) + 1))[:n] if n > len(base) else base[:n]
    return [w + " " for w in words[:-1]] + [words[-1]]


def split_text(text: str, n: int) -> list[str]:
    """`text` in at most `n` pieces that join back to it (stream chunks of a fixed answer)."""
    words = text.split(" ")
    n = max(1, min(n, len(words)))
    size = -(-len(words) // n)
    parts = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return [p + " " for p in parts[:-1]] + [parts[-1]]


def sample_args(schema: dict[str, Any] | None) -> dict[str, Any]:
    """Arguments for a tool call (or a structured answer) that satisfy a JSON schema: every
    property, nested objects and `$ref`s into `$defs` included (pydantic's nested models)."""
    value = sample_value(schema or {}, (schema or {}).get("$defs") or (schema or {}).get("definitions") or {}, 0)
    return value if isinstance(value, dict) else {}


def sample_value(spec: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    """One value of the JSON schema `spec` (first enum value, first non-null `anyOf` branch)."""
    if not isinstance(spec, dict):
        return "mock"
    ref = spec.get("$ref")
    if isinstance(ref, str) and depth < 8:
        return sample_value(defs.get(ref.rsplit("/", 1)[-1]) or {}, defs, depth + 1)
    if spec.get("enum"):
        return spec["enum"][0]
    if "const" in spec:
        return spec["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        branches = [b for b in spec.get(key) or [] if isinstance(b, dict) and b.get("type") != "null"]
        if branches:
            return sample_value(branches[0], defs, depth + 1)
    kind = spec.get("type", "object" if "properties" in spec else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = kind.lower() if isinstance(kind, str) else "string"
    if kind in ("number", "integer"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        items = spec.get("items")
        return [sample_value(items, defs, depth + 1)] if isinstance(items, dict) and depth < 8 else []
    if kind == "object":
        props = spec.get("properties") or {}
        return {name: sample_value(sub, defs, depth + 1) for name, sub in props.items()} if depth < 8 else {}
    return "mock"


def structured_answer(body: dict[str, Any]) -> str | None:
    """The answer text for a chat request with a JSON `response_format`, as a model honouring it
    gives: an instance of the json_schema, or a JSON object for json_object; None otherwise."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return json.dumps(sample_args(schema if isinstance(schema, dict) else {}))
    if fmt.get("type") == "json_object":  # the schema, if any, is in the prompt (Instructor's JSON mode)
        texts = [m.get("content") for m in body.get("messages") or [] if isinstance(m, dict)]
        return json_answer(schema_in_text(" ".join(t for t in texts if isinstance(t, str))))
    return None


def json_answer(schema: dict[str, Any] | None) -> str:
    """What a model in JSON mode answers: an instance of the schema, or a plain object without one."""
    return json.dumps(sample_args(schema) if schema else {"answer": "mock"})


_PROMPTED_SCHEMA = re.compile(r"Use this JSON schema:\s*```json\s*(\{.*\})\s*```", re.S)


def schema_in_text(text: str) -> dict[str, Any] | None:
    """A JSON schema a prompt carries, which a model asked for JSON follows: the first JSON object
    with `properties` (Instructor's JSON mode), or the one LiteLLM writes for a model it thinks has
    no schema parameter ("Use this JSON schema: ```json {...}```", a Python dict's repr)."""
    m = _PROMPTED_SCHEMA.search(text)
    if m:
        try:
            value = ast.literal_eval(m.group(1))
            return value if isinstance(value, dict) else None
        except (ValueError, SyntaxError):
            pass
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = decoder.raw_decode(text, start)
            if isinstance(value, dict) and "properties" in value:
                return value
        except ValueError:
            pass
        start = text.find("{", start + 1)
    return None


def wants_tool(prompt: str, forced: bool) -> bool:
    """A tool call is answered when the caller forces one or the last user turn asks for one."""
    low = prompt.lower()
    return forced or "tool" in low or "call " in low or "weather" in low
