"""Input and result lines of a batch: the JSONL shapes OpenAI's Batch API reads and writes.

Input: one `{"custom_id", "method": "POST", "url", "body"}` object per line. The envelope is
checked for the whole file when the batch is created (a malformed file is refused with the line
number); the body is checked per line by the request path that serves it (an unknown model or a
bad parameter fails that line only, in the error file).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}


class LineError(ValueError):
    """A malformed input file: the message names the line (1-based) and what is wrong."""


@dataclass(frozen=True)
class Line:
    idx: int
    custom_id: str
    body: dict[str, Any]


def parse_lines(data: bytes, endpoint: str, max_lines: int) -> list[Line]:
    """Every request of an input file, in order; LineError for the first malformed line.

    Blank lines are skipped (as OpenAI does); custom_id must be a unique non-empty string,
    method POST, url the batch's endpoint, body an object naming a model.
    """
    if endpoint not in ENDPOINTS:
        raise LineError(f"endpoint {endpoint!r} is not supported; use one of {', '.join(ENDPOINTS)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LineError(f"the file is not UTF-8 text: {e}") from None
    out: list[Line] = []
    seen: set[str] = set()
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"line {n}"
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise LineError(f"{where} is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise LineError(f"{where} must be a JSON object with custom_id, method, url and body")
        unknown = sorted(set(obj) - {"custom_id", "method", "url", "body"})
        if unknown:
            raise LineError(f"{where} has unknown field(s) {unknown}; expected custom_id, method, url, body")
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid or len(cid) > 512:
            raise LineError(f"{where}: custom_id must be a non-empty string of at most 512 characters")
        if cid in seen:
            raise LineError(f"{where}: custom_id {cid!r} appears twice; each request needs its own")
        if obj.get("method") != "POST":
            raise LineError(f"{where}: method must be \"POST\"")
        if obj.get("url") != endpoint:
            raise LineError(f"{where}: url {obj.get('url')!r} differs from the batch's endpoint {endpoint!r}")
        body = obj.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            raise LineError(f"{where}: body must be an object with a \"model\"")
        if body.get("stream"):
            raise LineError(f"{where}: batch requests cannot stream (body.stream must be false or absent)")
        seen.add(cid)
        out.append(Line(len(out), cid, body))
        if len(out) > max_lines:
            raise LineError(f"the file holds more than {max_lines} requests (batches.max_lines)")
    if not out:
        raise LineError("the file holds no requests")
    return out


def line_request_id(batch_id: str, idx: int) -> str:
    """A line's request id: fixed by its batch and position, so a resumed line keeps its id."""
    return f"{batch_id}-{idx}"


def line_row_uid(batch_id: str, idx: int) -> str:
    """The ledger row id of a line (32 hex, the ledger's unique `row_uid`): charged at most once."""
    return hashlib.sha256(f"{batch_id}:{idx}".encode()).hexdigest()[:32]


def result_line(batch_id: str, line: Line, status: int | None, body: dict[str, Any] | None,
                error: dict[str, Any] | None = None) -> str:
    """One output/error file line in OpenAI's shape: `response` when the request was served
    (any status), `error` {code, message} when it never ran (quota, cancel, expiry)."""
    rid = line_request_id(batch_id, line.idx)
    obj = {
        "id": f"batch_req_{line_row_uid(batch_id, line.idx)}",
        "custom_id": line.custom_id,
        "response": None if status is None else {"status_code": status, "request_id": rid, "body": body},
        "error": error,
    }
    return json.dumps(obj, separators=(",", ":"))


def line_usage(body: Any) -> dict[str, int]:
    """A served line's token counts, named as the batch totals are (Batch.usage): OpenAI's chat and
    completion `usage` (prompt/completion tokens and their details), embeddings' prompt tokens."""
    u = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(u, dict):
        return {}

    def n(v: Any) -> int:
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0

    return {"input_tokens": n(u.get("prompt_tokens")),
            "cached_tokens": n((u.get("prompt_tokens_details") or {}).get("cached_tokens")),
            "output_tokens": n(u.get("completion_tokens")),
            "reasoning_tokens": n((u.get("completion_tokens_details") or {}).get("reasoning_tokens"))}
