"""Self-hosted models: `provider: vllm` config entries become ray.serve.llm LLMServer deployments.

Two halves:

* Build side (driver): `llm_config_for(entry)` maps a config entry onto `ray.serve.llm.LLMConfig`
  (model source, engine kwargs, autoscaling, accelerator type, placement group, LoRA, runtime env)
  and `build_vllm_app(entry, cfg)` turns it into a deployment with `build_llm_deployment`.
* Call side (ingress): `VLLMBackend(handle)` implements the gateway's `ModelBackend` interface
  (chat / chat_stream / completion / completion_stream with OpenAI-shaped dicts) over the
  deployment handle, and raises `app.errors.UpstreamError` so fallback chains move on.

The deployment class is `DokaLLMServer`, ray.serve.llm's own `LLMServer` plus two dict-in /
dict-out entry points. They exist so the ingress never has to import vLLM and torch (~20 s and
~800 MB per ingress replica) just to build `ChatCompletionRequest` objects and to unpickle the
vLLM response models: the request is validated and the answer serialised inside the replica,
which has vLLM loaded anyway. Engine, batching, LoRA multiplexing and health checks are
LLMServer's unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from app.config import DokaConfig, ModelEntry, VLLMParams, resolve_secret
from app.errors import UpstreamError

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle
    from ray.serve.llm import LLMConfig

logger = logging.getLogger("ray.serve")

# Env for vLLM's CPU backend; applied only to CPU-only deployments and only where not set.
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1"}
# Passed from the driver to the replicas when set there (offline hub, CPU tuning).
PASSTHROUGH_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND",
                   "VLLM_LOGGING_LEVEL")
# LLMServer's default target (1e9) never scales up; this is used when min < max replicas.
DEFAULT_TARGET_ONGOING_REQUESTS = 32


# ----------------------------------------------------------------------------- build side
def _resolve_source(source: str) -> str:
    """Local paths (`./`, `../`, `/`, `~`, or an existing relative dir) become absolute, because
    replicas do not share the driver's working directory; hub ids and URLs pass through."""
    expanded = os.path.expanduser(source)
    if source.startswith((".", "/", "~")) or Path(expanded).is_dir():
        return str(Path(expanded).resolve())
    return source


def _is_cpu_only(entry: ModelEntry) -> bool:
    v = entry.vllm
    assert v is not None
    if v.accelerator_type:
        return False
    bundles = list((v.placement_group_config or {}).get("bundles") or [])
    bundles.append((v.placement_group_config or {}).get("bundle_per_worker") or {})
    return v.placement_group_config is not None and not any(b.get("GPU", 0) or b.get("TPU", 0) for b in bundles)


def _runtime_env(entry: ModelEntry) -> dict[str, Any] | None:
    v = entry.vllm
    assert v is not None
    env = dict(resolve_secret(v.runtime_env) or {})
    env_vars = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    if _is_cpu_only(entry):
        env_vars = {**CPU_ENV_DEFAULTS, **env_vars}
    env_vars.update({k: str(x) for k, x in (env.get("env_vars") or {}).items()})
    if env_vars:
        env["env_vars"] = env_vars
    return env or None


def engine_kwargs_for(v: VLLMParams) -> dict[str, Any]:
    """The engine_kwargs ray.serve.llm gets: the config's, plus vLLM's tool calling when
    `vllm.tool_call_parser` is set (ray.serve.llm hands `enable_auto_tool_choice` and
    `tool_call_parser` to vLLM's OpenAI frontend, the rest to the engine)."""
    kwargs = resolve_secret(dict(v.engine_kwargs))
    if v.tool_call_parser:
        kwargs["enable_auto_tool_choice"] = True
        kwargs["tool_call_parser"] = v.tool_call_parser
    return kwargs


def llm_config_for(entry: ModelEntry) -> "LLMConfig":
    """The ray.serve.llm LLMConfig for one `provider: vllm` entry; the model id is the gateway's
    model name, so responses carry the name the client asked for."""
    from ray.serve.llm import LLMConfig

    v = entry.vllm
    if entry.provider != "vllm" or v is None:
        raise ValueError(f"model {entry.model_name!r} is not a `provider: vllm` entry")
    autoscaling: dict[str, Any] = {"min_replicas": v.min_replicas, "max_replicas": max(v.max_replicas, v.min_replicas)}
    if autoscaling["max_replicas"] > autoscaling["min_replicas"]:
        autoscaling["target_ongoing_requests"] = DEFAULT_TARGET_ONGOING_REQUESTS
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": entry.model_name, "model_source": _resolve_source(v.model_source)},
        "engine_kwargs": engine_kwargs_for(v),
        "deployment_config": {"autoscaling_config": autoscaling},
    }
    if v.start_retries is not None:
        kwargs["deployment_config"]["max_constructor_retry_count"] = v.start_retries
    if v.accelerator_type:
        kwargs["accelerator_type"] = v.accelerator_type
    if v.placement_group_config:
        kwargs["placement_group_config"] = v.placement_group_config
    if v.lora_config:
        kwargs["lora_config"] = resolve_secret(v.lora_config)
    if v.stream_batching_interval_ms is not None:
        kwargs["experimental_configs"] = {"stream_batching_interval_ms": v.stream_batching_interval_ms}
    runtime_env = _runtime_env(entry)
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    return LLMConfig(**kwargs)


def build_vllm_app(entry: ModelEntry, cfg: DokaConfig | None = None) -> "Application":
    """One LLMServer deployment as an Application: the whole of that tier's Serve application."""
    from ray.serve.llm import build_llm_deployment

    source = entry.vllm.model_source if entry.vllm else ""
    if source.startswith((".", "/", "~")) and not Path(os.path.expanduser(source)).exists():
        logger.warning("doka: vLLM model %s: %s does not exist (run `doka models make-tiny`); "
                       "its tier will fail over", entry.model_name, source)
    from deployments.tier_apps import deployment_name

    # the name the ingress asks Serve for (deployments/tier_apps.py), set rather than derived
    return build_llm_deployment(llm_config_for(entry), name_prefix="LLMServer:", deployment_cls=_server_cls(),
                                override_serve_options={"name": deployment_name(entry.model_name)})


def build_vllm_models(cfg: DokaConfig) -> dict[str, "Application"]:
    """model name -> LLMServer Application, for every `provider: vllm` model in the config."""
    return {m.model_name: build_vllm_app(m, cfg) for m in cfg.model_list if m.provider == "vllm"}


# ----------------------------------------------------------------------------- replica side
def _sse_payloads(item: Any) -> list[dict[str, Any]]:
    """LLMServer streams lists of `data: {...}\\n\\n` strings (and may put an ErrorResponse in
    them); turn one yielded item into chunk dicts, dropping the `[DONE]` sentinel."""
    out: list[dict[str, Any]] = []
    for part in item if isinstance(item, list) else [item]:
        if hasattr(part, "model_dump"):
            out.append(part.model_dump(mode="json"))
            continue
        for event in str(part).split("\n\n"):
            event = event.strip()
            if not event.startswith("data:"):
                continue
            data = event[len("data:"):].strip()
            if data and data != "[DONE]":
                out.append(json.loads(data))
    return out


def _server_cls() -> type:
    """DokaLLMServer, defined lazily so importing this module never imports ray.llm/vLLM."""
    global _SERVER_CLS
    if _SERVER_CLS is None:
        from ray.serve.llm.deployment import LLMServer

        class DokaLLMServer(LLMServer):
            """ray.serve.llm's LLMServer with dict-in/dict-out entry points for the ingress."""

            async def _run_json(self, kind: str, body: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
                from pydantic import ValidationError
                from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

                model_cls = ChatCompletionRequest if kind == "chat" else CompletionRequest
                try:
                    request = model_cls.model_validate(body)
                except ValidationError as e:
                    yield [_error_dict(400, f"invalid request: {e.errors()[0].get('msg')} at "
                                            f"{'.'.join(map(str, e.errors()[0].get('loc', ())))}")]
                    return
                method = self.chat if kind == "chat" else self.completions
                async for item in await method(request):
                    yield _sse_payloads(item)

            async def chat_json(self, body: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
                async for batch in self._run_json("chat", body):
                    yield batch

            async def completions_json(self, body: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
                async for batch in self._run_json("completions", body):
                    yield batch

            async def doka_load(self) -> dict[str, Any]:
                """This replica's engine load for the ingress's load-aware tiers (deployments/tier_load.py)."""
                client = getattr(getattr(self, "engine", None), "_engine_client", None)
                reading = engine_load(client, _queue_recorder(client))
                return {**reading, "replica": _replica_id()}

        DokaLLMServer.__module__ = __name__
        DokaLLMServer.__qualname__ = "DokaLLMServer"
        globals()["DokaLLMServer"] = DokaLLMServer  # picklable by reference
        _SERVER_CLS = DokaLLMServer
    return _SERVER_CLS


_SERVER_CLS: type | None = None


def __getattr__(name: str) -> Any:  # `deployments.vllm.DokaLLMServer` resolves in replicas too
    if name == "DokaLLMServer":
        return _server_cls()
    raise AttributeError(name)


class QueueRecorder:
    """A vLLM stat logger that keeps the scheduler's latest waiting/running counts per engine.

    vLLM's AsyncLLM hands every engine step's SchedulerStats to the loggers of its
    StatLoggerManager (the same numbers its Prometheus logger exports as
    `vllm:num_requests_waiting` / `vllm:num_requests_running`). ray.serve.llm builds the AsyncLLM
    itself and takes no extra stat logger, so `_queue_recorder` appends this one to the running
    engine's manager; the other methods are the logger interface's no-ops.
    """

    def __init__(self) -> None:
        self.by_engine: dict[int, tuple[int, int]] = {}

    def record(self, scheduler_stats: Any, iteration_stats: Any = None, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        if scheduler_stats is not None:
            waiting = int(scheduler_stats.num_waiting_reqs) + int(getattr(scheduler_stats, "num_skipped_waiting_reqs", 0))
            self.by_engine[engine_idx] = (waiting, int(scheduler_stats.num_running_reqs))

    def log(self) -> None:
        pass

    def log_engine_initialized(self) -> None:
        pass

    def record_sleep_state(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record_admission_rejection(self, reason: str) -> None:
        pass


def _queue_recorder(client: Any) -> QueueRecorder | None:
    """The QueueRecorder on this engine client's stat logger manager (added on first use); None
    when the engine keeps no stats (vLLM's `disable_log_stats`)."""
    manager = getattr(client, "logger_manager", None)
    if manager is None:
        return None
    for logger_ in manager.stat_loggers:
        if isinstance(logger_, QueueRecorder):
            return logger_
    recorder = QueueRecorder()
    manager.stat_loggers.append(recorder)
    return recorder


def engine_load(client: Any, recorder: QueueRecorder | None) -> dict[str, Any]:
    """{waiting, running, source} for one vLLM AsyncLLM engine client.

    The scheduler's counts when its stats have been seen (`source: vllm`). An engine with no
    request left is idle whatever the last step said (no step runs, so no newer stats come).
    Without stats (first poll before any step, or stats disabled) the frontend's unfinished
    requests are split at the scheduler's max_num_seqs (`source: frontend`).
    """
    if client is None:  # engine still starting: nothing queued in it yet
        return {"waiting": 0, "running": 0, "source": "starting"}
    unfinished = int(client.output_processor.get_num_unfinished_requests())
    if unfinished == 0:
        return {"waiting": 0, "running": 0, "source": "vllm"}
    if recorder is not None and recorder.by_engine:
        waiting = sum(w for w, _ in recorder.by_engine.values())
        running = sum(r for _, r in recorder.by_engine.values())
        return {"waiting": waiting, "running": running, "source": "vllm"}
    seqs = int(getattr(getattr(client.vllm_config, "scheduler_config", None), "max_num_seqs", 0) or unfinished)
    return {"waiting": max(unfinished - seqs, 0), "running": min(unfinished, seqs), "source": "frontend"}


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (library use)
        return ""


def _error_dict(status: int, message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": status}}


# ----------------------------------------------------------------------------- ingress side
_VLLM_EXTRA_KEYS = ("prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params",
                    "metrics", "routed_experts", "token_ids", "stop_reason")


def normalize_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI usage with integer counts and total = prompt + completion (the same counting the
    egress reports for external providers); vLLM's null detail fields are dropped."""
    if not usage:
        return None
    p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    for key in ("prompt_tokens_details", "completion_tokens_details"):
        if usage.get(key):
            out[key] = usage[key]
    return out


def _clean(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop vLLM-only null fields, so the answer looks like any other provider's."""
    for key in _VLLM_EXTRA_KEYS:
        if obj.get(key) is None:
            obj.pop(key, None)
    for choice in obj.get("choices") or []:
        for key in _VLLM_EXTRA_KEYS:
            if choice.get(key) is None:
                choice.pop(key, None)
    if "usage" in obj:
        obj["usage"] = normalize_usage(obj["usage"])
        if obj["usage"] is None:
            obj.pop("usage")
    return obj


def _raise_if_error(payload: dict[str, Any]) -> None:
    err = payload.get("error")
    if err is None:
        return
    if isinstance(err, dict):
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        raise UpstreamError(status, str(err.get("message") or err))
    raise UpstreamError(502, str(err))


class VLLMBackend:
    """The gateway's ModelBackend over one DokaLLMServer deployment handle.

    The ingress applies the tier timeout (to the whole call, or to the first chunk of a
    stream); `timeout` is accepted for the shared interface. Closing a stream early cancels the
    request in the replica, which aborts it in the engine.
    """

    def __init__(self, handle: "DeploymentHandle") -> None:
        self._handle = handle.options(stream=True)
        self._plain = handle

    async def load(self) -> dict[str, Any]:
        """One replica's `doka_load` reading (deployments/tier_load.py polls this, never per request)."""
        return await self._plain.doka_load.remote()

    def _request(self, model: str, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        req = {**body, "model": model, "stream": stream}
        if stream:
            # always ask for the usage chunk: the gateway settles spend from it
            req["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            req.pop("stream_options", None)
        return req

    async def _chunks(self, method: str, model: str, body: dict[str, Any], stream: bool) -> AsyncIterator[dict[str, Any]]:
        gen = getattr(self._handle, method).remote(self._request(model, body, stream))
        finished = False
        try:
            async for batch in gen:
                for payload in batch:
                    _raise_if_error(payload)
                    yield _clean(payload)
            finished = True
        finally:
            if not finished:
                gen.cancel()

    async def _single(self, method: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        async for payload in self._chunks(method, model, body, stream=False):
            return payload
        raise UpstreamError(502, f"{model}: vLLM returned no response")

    async def chat(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self._single("chat_json", model, body)

    async def completion(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self._single("completions_json", model, body)

    async def embedding(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Local models serve chat only here: a clear 400 (not a fallback) if a config says otherwise."""
        raise UpstreamError(400, f"{model}: doka's vLLM deployments serve chat and completions, not embeddings")

    def chat_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._chunks("chat_json", model, body, stream=True)

    def completion_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._chunks("completions_json", model, body, stream=True)
