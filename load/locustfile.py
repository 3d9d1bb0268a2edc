"""Locust scenarios for any OpenAI-compatible URL (doka, LiteLLM proxy, the mock upstream).

    locust -f load/locustfile.py --headless -u 10 -r 5 -t 20s --host http://127.0.0.1:8000 \
        --csv load/results/locust --html load/results/locust.html

Scenarios (locust tags; pick some with `--tags chat stream`, drop some with `--exclude-tags auto`):

  chat    explicit-model chat completion (DOKA_LOCUST_MODEL, default mock-gpt-3.5)
  auto    `model: auto`, the router decides (doka only: exclude it for other gateways)
  stream  streamed chat: a stream counts as a failure unless it ends with `data: [DONE]`
          without an error event; its time to first chunk is reported as `stream first chunk`
  keys    chat with keys drawn round-robin from DOKA_LOCUST_KEYS (comma-separated, e.g. keys
          with different quotas from `doka keys`); a 429 in OpenAI's error shape is the quota
          doing its job and is reported as `keys 429 (quota)`, never as a failure

Every request carries `Authorization: Bearer $DOKA_LOCUST_KEY` (falling back to
DOKA_MASTER_KEY, then OPENAI_API_KEY). Any non-2xx answer other than the quota case, a body
that is not a chat completion, or a broken stream is a failure in the CSV/HTML.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any

from locust import HttpUser, between, events, tag, task

MODEL = os.environ.get("DOKA_LOCUST_MODEL", "mock-gpt-3.5")
AUTO_MODEL = os.environ.get("DOKA_LOCUST_AUTO_MODEL", "auto")
KEY = os.environ.get("DOKA_LOCUST_KEY") or os.environ.get("DOKA_MASTER_KEY") or os.environ.get("OPENAI_API_KEY", "")
KEYS = [k.strip() for k in os.environ.get("DOKA_LOCUST_KEYS", "").split(",") if k.strip()] or [KEY]
_key_cycle = itertools.cycle(KEYS)
PROMPTS = ("Write a python function that reverses a string.", "Hi there! How is your day going?",
           "Summarise the plot of Hamlet in two sentences.", "What is 17 * 23?")
CHAT_PATH = "/v1/chat/completions"


def _body(model: str, n: int, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 32,
                            "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _is_completion(resp: Any) -> bool:
    try:
        data = resp.json()
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("choices"))


def _is_openai_error(resp: Any) -> bool:
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(err, dict) and {"message", "type"} <= set(err)


class OpenAIUser(HttpUser):
    """One client: a short think time between calls, so `-u` is roughly the concurrency."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.n = 0

    def _chat(self, name: str, model: str, key: str, quota_ok: bool = False) -> None:
        self.n += 1
        with self.client.post(CHAT_PATH, json=_body(model, self.n), headers=_headers(key), name=name,
                              catch_response=True) as resp:
            if resp.status_code == 200 and _is_completion(resp):
                resp.success()
            elif quota_ok and resp.status_code == 429 and _is_openai_error(resp):
                resp.success()  # the key's quota answered, as it should; counted under its own name
                events.request.fire(request_type="POST", name=f"{name} 429 (quota)", response_time=0,
                                    response_length=0, exception=None, context={})
            else:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @tag("chat")
    @task(4)
    def chat(self) -> None:
        self._chat("chat", MODEL, KEY)

    @tag("auto")
    @task(3)
    def auto(self) -> None:
        self._chat("auto", AUTO_MODEL, KEY)

    @tag("keys")
    @task(2)
    def keys(self) -> None:
        self._chat("keys", MODEL, next(_key_cycle), quota_ok=True)

    @tag("stream")
    @task(3)
    def stream(self) -> None:
        self.n += 1
        t0 = time.perf_counter()
        first: float | None = None
        done, error, chunks = False, "", 0
        with self.client.post(CHAT_PATH, json=_body(MODEL, self.n, stream=True), headers=_headers(KEY),
                              name="stream", stream=True, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return
            try:
                for line in resp.iter_lines():
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk and "choices" not in chunk:
                        error = json.dumps(chunk["error"])[:200]
                        break
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
            except Exception as e:  # noqa: BLE001 - a cut stream is a failure, not a crash of the user
                error = f"{type(e).__name__}: {e}"[:200]
            if done and not error and chunks:
                resp.success()
            else:
                resp.failure(error or f"stream ended without [DONE] after {chunks} chunks")
        if first is not None:
            events.request.fire(request_type="SSE", name="stream first chunk",
                                response_time=(first - t0) * 1000, response_length=chunks, exception=None,
                                context={})
