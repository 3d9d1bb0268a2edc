"""The LiteLLM egress: calls external providers for every `provider: litellm` model.

One `litellm.Router` per replica holds the model list from the config: it resolves the
provider params (secrets from `os.environ/NAME`), picks the deployment, keeps the cooldown
of failing deployments and knows LiteLLM's cost map. Its full call path
(`Router.acompletion`) costs ~20 ms of CPU per call on this machine, more than the whole
gateway budget, so providers that already speak OpenAI's wire format (`openai/...`,
`hosted_vllm/...` with an `api_base`) take a pass-through path instead: the Router still
selects the deployment and records failures for cooldown, and the request body goes to the
provider over one shared aiohttp session, unchanged except for `model` (only the endpoint's
OpenAI parameters ever leave: app/request_params.py). Anthropic and Gemini
chat calls use LiteLLM's provider transformations directly over the same session
(deployments/translate.py: ~1 ms of CPU instead of ~8). Every other provider (Cohere, Bedrock,
`mock_response`, ...) goes through `Router.acompletion`, which translates. All paths return OpenAI-shaped dicts
and stream chunk dicts one by one.

Where it runs (`egress.placement`): inside each ingress replica by default (`EgressService`, no
Serve hop), or as the Egress deployment. Interface (the ingress's `ModelBackend` calls it;
deployments/backends.py):
  chat(model, body, timeout) -> dict            chat_stream(model, body, timeout) -> chunks
  completion(model, body, timeout) -> dict      completion_stream(model, body, timeout) -> chunks
  embedding(model, body, timeout) -> dict       (pass-through to `/embeddings`, else Router.aembedding)
Failures raise `app.errors.UpstreamError` with the provider's status (or 504 on timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Any, AsyncIterator

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch of the cost map

import aiohttp  # noqa: E402
import orjson  # noqa: E402 - 5x faster than json.loads on a stream chunk (docs/benchmarks.md)
from ray import serve  # noqa: E402

from app.config import DokaConfig, ModelEntry, parse_config, resolve_secret  # noqa: E402
from app.errors import UpstreamError  # noqa: E402
from app.request_params import KNOWN, provider_body  # noqa: E402
from deployments.egress_paths import is_passthrough  # noqa: E402
from deployments.ollama import register_ollama_models  # noqa: E402
from deployments.provider_errors import provider_errors  # noqa: E402
from deployments.stream_shape import openai_chat_stream  # noqa: E402

logger = logging.getLogger("ray.serve")

def cooldown_seconds(cfg: DokaConfig) -> float:
    """Seconds a failing deployment sits out: `egress.cooldown_s`, unless DOKA_COOLDOWN_S overrides
    it (tests set 0: cooldowns off)."""
    env = os.environ.get("DOKA_COOLDOWN_S")
    return float(env) if env else cfg.egress.cooldown_s


def litellm_model_list(cfg: DokaConfig) -> list[dict[str, Any]]:
    """The `model_list` for litellm.Router: one deployment per doka model, named as in doka."""
    out = []
    for m in cfg.model_list:
        if m.provider != "litellm":
            continue
        params = resolve_secret(dict(m.litellm_params))
        params.setdefault("timeout", m.model_info.timeout)
        info: dict[str, Any] = {"id": m.model_name}
        if m.model_info.input_cost_per_token is not None:
            info["input_cost_per_token"] = m.model_info.input_cost_per_token
        if m.model_info.output_cost_per_token is not None:
            info["output_cost_per_token"] = m.model_info.output_cost_per_token
        out.append({"model_name": m.model_name, "litellm_params": params, "model_info": info})
    return out


_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}


def _upstream_model(params: dict[str, Any]) -> str:
    return str(params["model"]).partition("/")[2] or str(params["model"])


def _error_message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except (ValueError, AttributeError):
        pass
    return raw[:200].decode(errors="replace") or "no body"


class PassThroughChunk(dict):
    """A chunk of a provider's OpenAI-format stream that also keeps the event's own bytes.

    The ingress reads it (metering, usage) and never changes it, so `OpenAIDialect.chunk` sends
    `raw` as it came instead of encoding the dict again. Pickled (across a Serve call, with
    `egress.placement: deployment`) it is a plain dict: the bytes would only double the message.
    """

    __slots__ = ("raw",)  # set right after construction (a Python __init__ would cost more than it saves)

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self),)


class EgressCore:
    """Egress logic without Ray (one per replica); see the module docstring."""

    def __init__(self, cfg: DokaConfig, cooldown_s: float | None = None) -> None:
        import litellm

        cooldown_s = cooldown_seconds(cfg) if cooldown_s is None else cooldown_s
        litellm.telemetry = False
        litellm.suppress_debug_info = True
        self.cfg = cfg
        self.entries: dict[str, ModelEntry] = {m.model_name: m for m in cfg.model_list if m.provider == "litellm"}
        register_ollama_models(cfg)  # else LiteLLM asks an Ollama server about them on every call
        self.router = litellm.Router(
            model_list=litellm_model_list(cfg),
            num_retries=0,  # the ingress owns fallbacks; per-model retries happen here, below
            allowed_fails=1,
            cooldown_time=cooldown_s,
            disable_cooldowns=cooldown_s <= 0,
        )
        self._session: aiohttp.ClientSession | None = None
        self._cooldown_s = cooldown_s
        # Fast selection: a model with one deployment and no failure within the cooldown window
        # cannot be cooling down, so skip the Router's selection (~0.3 ms per call) for it.
        groups: dict[str, list[dict[str, Any]]] = {}
        for dep in self.router.model_list:
            groups.setdefault(dep["model_name"], []).append(dep)
        self._single = {name: deps[0] for name, deps in groups.items() if len(deps) == 1}
        self._last_failure: dict[str, float] = {}
        # what an operator lets clients add to a model's call (`model_info.allow_client_params`)
        self._client_params = {n: frozenset(e.model_info.allow_client_params) for n, e in self.entries.items()}
        # Anthropic and Gemini without Router.acompletion: LiteLLM's transformations called
        # directly (~1 ms of CPU a call instead of ~8; deployments/translate.py)
        from deployments.translate import AnthropicDirect, GeminiDirect

        self.direct = AnthropicDirect()
        self.directs = {d.provider: d for d in (self.direct, GeminiDirect())}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
                json_serialize=lambda o: json.dumps(o, separators=(",", ":")),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ selection + cooldown
    async def _deployment(self, model: str) -> dict[str, Any]:
        if model not in self.entries:
            raise UpstreamError(404, f"egress has no model {model!r}")
        single = self._single.get(model)
        if single is not None and time.monotonic() - self._last_failure.get(model, -1e18) > self._cooldown_s:
            return single
        try:
            return await self.router.async_get_available_deployment(model=model, request_kwargs={})
        except Exception as e:  # every deployment is cooling down
            left = self._cooldown_s - (time.monotonic() - self._last_failure.get(model, -1e18))
            raise UpstreamError(503, f"{model} is cooling down after recent failures: {e}",
                                retry_after=max(1.0, min(left, self._cooldown_s))) from None

    def _failed(self, model: str, deployment: dict[str, Any], err: UpstreamError) -> None:
        from litellm.router_utils.cooldown_handlers import set_cooldown_deployments

        if err.is_client_error:  # the request's fault, not the provider's: no cooldown
            return
        self._last_failure[model] = time.monotonic()
        try:
            set_cooldown_deployments(self.router, err, err.status, deployment["model_info"]["id"],
                                     requested_model_group=model)
        except Exception:  # cooldown bookkeeping must never turn into the request's error
            logger.exception("egress: could not record cooldown for %s", model)

    # ------------------------------------------------------------------ public interface
    def _allowed(self, kind: str, model: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """What of `body` may reach `model`'s provider: `kind`'s OpenAI parameters and the ones the
        operator allowed for this model, never the whole body (the ingress refused the rest
        already; this holds for any caller). True when an operator-allowed extra is present: only
        LiteLLM's own call path honours such parameters (an `api_base`, say)."""
        extra = self._client_params.get(model, frozenset())
        out = provider_body(kind, body, extra)
        return out, bool(extra) and any(k not in KNOWN[kind] for k in out)

    async def call(self, kind: str, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        retries = self.entries[model].model_info.max_retries if model in self.entries else 0
        body, custom = self._allowed(kind, model, body)
        for attempt in range(retries + 1):
            dep = await self._deployment(model)
            try:
                params = dep["litellm_params"]
                if custom:
                    return await self._litellm_call(kind, model, body, timeout)
                if is_passthrough(params):
                    return await self._post(kind, params, body, timeout)
                direct = self._direct(kind, params, body)
                if direct is not None:
                    return await direct.call(self.session(), params, body, timeout)
                return await self._litellm_call(kind, model, body, timeout)
            except UpstreamError as e:
                self._failed(model, dep, e)
                if attempt >= retries or e.is_client_error:
                    raise
        raise AssertionError("unreachable")

    async def stream(self, kind: str, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        body, custom = self._allowed(kind, model, body)
        dep = await self._deployment(model)
        params = dep["litellm_params"]
        if custom:
            source = self._litellm_stream(kind, model, body, timeout)
        elif is_passthrough(params):
            source = self._post_stream(kind, params, body, timeout)
        elif (direct := self._direct(kind, params, body)) is not None:
            source = direct.stream(self.session(), params, body, timeout)
        else:
            source = self._litellm_stream(kind, model, body, timeout)
        try:
            async for chunk in source:
                yield chunk
        except UpstreamError as e:
            self._failed(model, dep, e)
            raise

    def _direct(self, kind: str, params: dict[str, Any], body: dict[str, Any]) -> Any:
        """The direct translation for this chat call, or None (Router.acompletion then)."""
        if kind != "chat":
            return None
        d = self.directs.get(str(params.get("model", "")).partition("/")[0])
        return d if d is not None and d.handles(params, body) else None

    # ------------------------------------------------------------------ pass-through path
    def _request(self, kind: str, params: dict[str, Any], body: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
        url = str(params["api_base"]).rstrip("/") + _PATHS[kind]
        headers = {"Content-Type": "application/json"}
        if params.get("api_key"):
            headers["Authorization"] = f"Bearer {params['api_key']}"
        payload = {**body, "model": _upstream_model(params)}
        return url, headers, payload

    async def _post(self, kind: str, params: dict[str, Any], body: dict[str, Any], timeout: float) -> dict[str, Any]:
        url, headers, payload = self._request(kind, params, body)
        with provider_errors(timeout, stream=False, invalid="provider sent invalid JSON"):
            async with self.session().post(url, json=payload, headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise UpstreamError(resp.status, _error_message(raw))
                return orjson.loads(raw)

    async def _post_stream(self, kind: str, params: dict[str, Any], body: dict[str, Any],
                           timeout: float) -> AsyncIterator[dict[str, Any]]:
        url, headers, payload = self._request(kind, params, body)
        payload["stream"] = True
        with provider_errors(timeout, stream=True, invalid="provider sent an invalid stream chunk"):
            async with self.session().post(url, json=payload, headers=headers,
                                           timeout=aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)) as resp:
                if resp.status >= 400:
                    raise UpstreamError(resp.status, _error_message(await resp.read()))
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    decoded = orjson.loads(data)
                    if not isinstance(decoded, dict):
                        raise ValueError("a stream event that is not a JSON object")
                    if "error" in decoded and "choices" not in decoded:
                        err = decoded["error"]
                        raise UpstreamError(502, err.get("message", str(err)) if isinstance(err, dict) else str(err))
                    chunk = PassThroughChunk(decoded)
                    chunk.raw = data
                    yield chunk
            raise UpstreamError(502, "provider closed the stream before [DONE]")

    # ------------------------------------------------------------------ litellm path
    def _litellm_kwargs(self, kind: str, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Router keyword arguments from the allow-list only: LiteLLM reads its own control
        arguments (api_base, api_key, fallbacks, mock_response, ...) off the same call."""
        kwargs = provider_body(kind, body, self._client_params.get(model, frozenset()))
        kwargs.pop("model", None)
        kwargs.update(model=model, timeout=timeout)
        return kwargs

    async def _litellm_call(self, kind: str, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        kwargs = self._litellm_kwargs(kind, model, body, timeout)
        try:
            fn = {"chat": self.router.acompletion, "completion": self.router.atext_completion,
                  "embedding": self.router.aembedding}[kind]
            resp = await fn(**kwargs)
        except Exception as e:
            raise _from_litellm(e, timeout, model) from None
        return resp.model_dump(exclude_none=True)

    async def _litellm_stream(self, kind: str, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        kwargs = self._litellm_kwargs(kind, model, body, timeout)
        kwargs["stream"] = True
        try:
            fn = self.router.acompletion if kind == "chat" else self.router.atext_completion
            resp = await fn(**kwargs)
            chunks = (chunk.model_dump(exclude_none=True) async for chunk in resp)
            async for chunk in (openai_chat_stream(chunks) if kind == "chat" else chunks):
                yield chunk
        except UpstreamError:
            raise
        except Exception as e:
            raise _from_litellm(e, timeout, model) from None


_UNSUPPORTED = re.compile(r"(\w+) does not support parameters: \[([^\]]*)\]")


def _from_litellm(e: Exception, timeout: float, model: str = "") -> UpstreamError:
    """LiteLLM's exception as the provider's status: LiteLLM folds Anthropic's 529 overloaded
    into a 500 (and wraps stream failures), so the provider's own error type is read back.
    Parameters the provider does not take are a 400 in doka's words (LiteLLM's advice names
    settings doka users do not have), which a chain or `auto` skips to the next tier on."""
    import litellm
    from litellm.exceptions import MidStreamFallbackError

    if isinstance(e, MidStreamFallbackError) and getattr(e, "original_exception", None) is not None:
        e = e.original_exception
    if isinstance(e, (litellm.Timeout, asyncio.TimeoutError)):
        return UpstreamError(504, f"no answer within {timeout:g}s", timed_out=True)
    if isinstance(e, litellm.UnsupportedParamsError) and (m := _UNSUPPORTED.search(str(e))):
        names = ", ".join(n.strip(" '\"") for n in m.group(2).split(","))
        return UpstreamError(400, f"model {model!r} ({m.group(1)}) does not support parameters: {names}; leave them "
                                  "out, or an operator can set `drop_params: true` in its litellm_params to drop them")
    status = getattr(e, "status_code", None)
    text = str(e)
    if "overloaded_error" in text or '"code":529' in text.replace(" ", ""):
        status = 529
    return UpstreamError(status if isinstance(status, int) and status >= 400 else 502, text[:500])


class EgressService:
    """The egress's call interface (the `ModelBackend` methods) around one `EgressCore`.

    `egress.placement: ingress` (the default): each ingress replica holds one and calls it in
    process, so an explicit request costs no Serve hop. `placement: deployment`: the Egress
    deployment below serves the same methods to `deployments.backends.HandleBackend`.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.core = EgressCore(parse_config(config, source="egress"))

    async def chat(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self.core.call("chat", model, body, timeout)

    async def completion(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self.core.call("completion", model, body, timeout)

    async def embedding(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self.core.call("embedding", model, body, timeout)

    async def chat_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self.core.stream("chat", model, body, timeout):
            yield chunk

    async def completion_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self.core.stream("completion", model, body, timeout):
            yield chunk

    async def ping(self) -> str:
        return "ok"

    async def close(self) -> None:
        """Close the provider session (the owner calls it: the ingress, or Serve via `__del__`)."""
        await self.core.close()


@serve.deployment(name="Egress")
class Egress(EgressService):
    """The egress as its own deployment (`egress.placement: deployment`)."""

    async def __del__(self) -> None:  # Serve awaits it when the replica stops
        await self.close()
