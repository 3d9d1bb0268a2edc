"""The trace store: one JSON line per gateway request, the raw material for retraining.

Records are queued on the request path and written in batches by a background thread, each
batch as a new immutable JSONL file (object stores cannot append), under
`<root>/requests/` where root is `observability.traces_url` (any fsspec URL) or
`<data_dir>/traces`. Feedback lives beside them in `<root>/feedback/` (see feedback.py).
Both read back with `ray.data.read_json(<root>/requests)` or `read_records` below.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
import uuid
from typing import Any

import fsspec
from pydantic import BaseModel, Field

from app.config import DokaConfig, ObservabilityConfig
from app.schemas import prompt_text  # noqa: F401  (the one train/serve text; re-exported for callers)

REQUESTS_DIR = "requests"
FEEDBACK_DIR = "feedback"
REDACTED_PREFIX = "[redacted sha256:"


class TraceRecord(BaseModel):
    """One request as the gateway saw it. Field names are the dataset contract for training."""

    request_id: str
    ts: float = Field(default_factory=time.time, description="unix time the request arrived")
    requested_model: str
    model: str | None = Field(None, description="the model that answered (after fallbacks)")
    candidates: list[str] = Field(default_factory=list)
    route_strategy: str | None = None
    route_score: float | None = None
    route_reason: str | None = None
    artifact_version: str | None = None
    attempts: list[str] = Field(default_factory=list, description="models tried, in order")
    status_code: int = 200
    error: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    key_id: str | None = None
    user: str | None = None
    stream: bool = False
    prompt: str | None = None


def redact(text: str) -> str:
    """A stand-in that keeps equal prompts equal (for grouping) without their content."""
    return f"{REDACTED_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:16]}]"


def prompt_for_store(prompt: str | None, cfg: ObservabilityConfig) -> str | None:
    """Apply `store_prompts` and `redact_prompts` to a prompt before it is persisted."""
    if prompt is None or not cfg.store_prompts:
        return None
    return redact(prompt) if cfg.redact_prompts else prompt


def traces_root(cfg: DokaConfig) -> str:
    return cfg.observability.traces_url or str(cfg.data_path("traces"))


class JsonlBatchWriter:
    """Queue of dicts flushed as new JSONL files by a daemon thread (never blocks callers)."""

    def __init__(self, url: str, prefix: str, batch_size: int = 256, flush_interval_s: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self._prefix = prefix
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=100_000)
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0
        self.written = 0
        self._fs, self._path = fsspec.core.url_to_fs(self.url)
        self._thread = threading.Thread(target=self._run, name=f"doka-{prefix}-writer", daemon=True)
        self._thread.start()

    def put(self, row: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:  # the store is down or slow: drop rather than stall requests
            self.dropped += 1

    def _drain(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                return rows

    def flush(self) -> int:
        """Write everything queued so far as one file; returns the number of rows written."""
        with self._flush_lock:
            rows = self._drain()
            if not rows:
                return 0
            name = f"{self._prefix}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._fs.makedirs(self._path, exist_ok=True)
            data = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in rows)
            tmp = f"{self._path}/.{name}.tmp"
            with self._fs.open(tmp, "w") as f:
                f.write(data)
            self._fs.mv(tmp, f"{self._path}/{name}")  # readers never see half a file
            self.written += len(rows)
            return len(rows)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception as e:  # keep the writer alive; the rows of that batch are lost
                print(f"doka trace store: flush to {self.url} failed: {e!r}", flush=True)

    def close(self) -> None:
        self._stop.set()
        self.flush()


class TraceStore:
    """Appends TraceRecords under `<root>/requests`."""

    def __init__(self, root: str, batch_size: int = 256, flush_interval_s: float = 1.0) -> None:
        self.root = root.rstrip("/")
        self._writer = JsonlBatchWriter(f"{self.root}/{REQUESTS_DIR}", "traces", batch_size, flush_interval_s)

    @classmethod
    def from_config(cls, cfg: DokaConfig, **kwargs: Any) -> "TraceStore":
        return cls(traces_root(cfg), **kwargs)

    @property
    def requests_url(self) -> str:
        return f"{self.root}/{REQUESTS_DIR}"

    def append(self, record: TraceRecord) -> None:
        self._writer.put(record.model_dump(mode="json"))

    def flush(self) -> int:
        return self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_records(url: str) -> list[dict[str, Any]]:
    """All rows of the JSONL files under `url` (small stores; use ray.data.read_json for big ones)."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return []
    rows: list[dict[str, Any]] = []
    for file in sorted(fs.glob(f"{path.rstrip('/')}/*.jsonl")):
        with fs.open(file, "r") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows
