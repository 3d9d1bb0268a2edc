"""Feedback on past requests (`POST /v1/feedback`), stored beside the traces and joined to them.

A client or an evaluator scores a gateway answer by its request id (the `x-request-id`
response header); the score becomes that model's quality label for that prompt when
`doka train-from-traces` builds the next routing dataset.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from observability.trace_store import FEEDBACK_DIR, JsonlBatchWriter, read_records


class FeedbackIn(BaseModel):
    """The `POST /v1/feedback` body."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=200)
    score: float = Field(ge=0.0, le=1.0, description="0 = bad answer, 1 = perfect")
    comment: str | None = Field(None, max_length=4000)
    source: str | None = Field(None, max_length=100, description="who scored it: user, an evaluator name, ...")


class FeedbackRecord(FeedbackIn):
    ts: float = Field(default_factory=time.time)
    key_id: str | None = None


def validation_error_body(err: ValidationError) -> dict[str, Any]:
    """OpenAI-shaped error JSON for a bad feedback body."""
    first = err.errors()[0]
    param = ".".join(str(x) for x in first["loc"]) or None
    return {
        "error": {
            "message": f"invalid feedback: {param}: {first['msg']}" if param else f"invalid feedback: {first['msg']}",
            "type": "invalid_request_error",
            "param": param,
            "code": "invalid_feedback",
        }
    }


def parse_feedback(payload: Any) -> FeedbackIn | dict[str, Any]:
    """The validated body, or an OpenAI error body to return with status 400."""
    if not isinstance(payload, dict):
        return {
            "error": {
                "message": "feedback body must be a JSON object",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_feedback",
            }
        }
    try:
        return FeedbackIn.model_validate(payload)
    except ValidationError as e:
        return validation_error_body(e)


class FeedbackStore:
    """Appends feedback under `<traces root>/feedback` off the request path."""

    def __init__(self, root: str, flush_interval_s: float = 1.0) -> None:
        self.root = root.rstrip("/")
        self._writer = JsonlBatchWriter(f"{self.root}/{FEEDBACK_DIR}", "feedback", flush_interval_s=flush_interval_s)

    def add(self, feedback: FeedbackIn, key_id: str | None = None) -> FeedbackRecord:
        record = FeedbackRecord(**feedback.model_dump(), key_id=key_id)
        self._writer.put(record.model_dump(mode="json"))
        return record

    def flush(self) -> int:
        return self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def mean_scores(feedback: list[dict[str, Any]]) -> dict[str, float]:
    """request_id -> mean feedback score (several raters may score one request)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for f in feedback:
        s = sums[f["request_id"]]
        s[0] += float(f["score"])
        s[1] += 1
    return {rid: total / n for rid, (total, n) in sums.items()}


def join_feedback(traces: list[dict[str, Any]], feedback: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Traces that received feedback, each with `feedback_score` (mean) and `feedback_count`."""
    scores = mean_scores(feedback)
    counts: dict[str, int] = defaultdict(int)
    for f in feedback:
        counts[f["request_id"]] += 1
    return [
        {**t, "feedback_score": scores[t["request_id"]], "feedback_count": counts[t["request_id"]]}
        for t in traces
        if t.get("request_id") in scores
    ]


def load_joined(root: str) -> list[dict[str, Any]]:
    """Read traces and feedback under a trace-store root and join them."""
    root = root.rstrip("/")
    return join_feedback(read_records(f"{root}/requests"), read_records(f"{root}/{FEEDBACK_DIR}"))
