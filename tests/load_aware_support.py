"""A stand-in for the vLLM tier with a queue depth the test sets (load-aware tiers, issue 33).

`QueueingLLM` answers the calls the ingress's VLLMBackend makes on doka's DokaLLMServer
(`chat_json` / `completions_json` streaming lists of OpenAI dicts, `doka_load` for the load
poller), so the real backend, poller and chain code run unchanged; only the engine is replaced,
by one whose waiting/running counts are whatever `set_queue` wrote (a file: the test and the replica
share this machine, and a driver-side handle would tie the test to one event loop).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, AsyncIterator

from ray import serve


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=64)
class QueueingLLM:
    def __init__(self, name: str, state_dir: str) -> None:
        self.name = name
        self.state = Path(state_dir) / f"{name}.json"  # `set_queue` writes it (one machine)

    async def doka_load(self) -> dict[str, Any]:
        queue = json.loads(self.state.read_text()) if self.state.exists() else {"waiting": 0, "running": 0}
        return {**queue, "source": "vllm", "replica": serve.get_replica_context().replica_id.unique_id}

    def _usage(self) -> dict[str, int]:
        return {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}

    async def chat_json(self, body: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
        base = {"id": "chatcmpl-local", "created": int(time.time()), "model": self.name}
        if body.get("stream"):
            yield [{**base, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "from the local tier"},
                                 "finish_reason": "stop"}]}]
            yield [{**base, "object": "chat.completion.chunk", "choices": [], "usage": self._usage()}]
            return
        yield [{**base, "object": "chat.completion", "usage": self._usage(),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the local tier"},
                             "finish_reason": "stop"}]}]

    async def completions_json(self, body: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
        yield [{"id": "cmpl-local", "object": "text_completion", "created": int(time.time()), "model": self.name,
                "choices": [{"index": 0, "text": "from the local tier", "finish_reason": "stop"}],
                "usage": self._usage()}]


def queueing_tier(raw: dict[str, Any], name: str, weights_dir: str, queue_limit: int,
                  chain: str | None = None) -> None:
    """Add a `provider: vllm` model `name` with `queue_limit` to the raw config (an auto
    candidate; `chain`: a fallback chain `[name, mock-mixtral]` under that name)."""
    raw["model_list"].insert(0, {
        "model_name": name, "provider": "vllm",
        "vllm": {"model_source": weights_dir, "placement_group_config": {"bundles": [{"CPU": 0.05}]}},
        "model_info": {"tier": "local", "timeout": 10, "input_cost_per_token": 0, "output_cost_per_token": 0,
                       "queue_limit": queue_limit}})
    if chain:
        raw.setdefault("fallbacks", {})[chain] = [name, "mock-mixtral"]


def fake_vllm_apps(monkeypatch: Any, state_dir: Path) -> None:
    """Make app/graph.py bind QueueingLLM where it would bind ray.serve.llm's LLMServer."""
    import deployments.vllm as vllm

    monkeypatch.setattr(vllm, "build_vllm_app",
                        lambda entry, cfg=None: QueueingLLM.options(name=f"LLMServer:{entry.model_name}")
                        .bind(entry.model_name, str(state_dir)))


def set_queue(state_dir: Path, name: str, waiting: int, running: int = 0) -> None:
    """The queue the stand-in for `name` reports from now on."""
    tmp = state_dir / f"{name}.json.tmp"
    tmp.write_text(json.dumps({"waiting": waiting, "running": running}))
    tmp.replace(state_dir / f"{name}.json")  # atomic: a poll never reads half a file
