"""Anthropic and Gemini through LiteLLM's own transformations, without `Router.acompletion`.

`Router.acompletion` costs ~8 ms of CPU per call on this box (docs/benchmarks.md), almost all
of it LiteLLM's generic machinery around the call (logging objects, callbacks, cost lookups,
`CustomStreamWrapper`), not the translation. So the egress calls the translation itself:
`AnthropicConfig.map_openai_params` / `validate_environment` / `transform_request` build the
Messages API request, the egress posts it over its shared aiohttp session, and
`AnthropicConfig.transform_response` (plain) or LiteLLM's Anthropic `ModelResponseIterator.chunk_parser`
(each SSE event) turn the answer back into OpenAI's shape: ~1 ms a call. The result and chunks
are what LiteLLM's full path returns, minus its empty keep-alive chunks; usage comes as
OpenAI sends it (a last chunk with no choices, when `stream_options.include_usage`).

Gemini the same way with `GoogleAIStudioGeminiConfig`, LiteLLM's Gemini request-body
transformation and its Gemini stream parser (`GeminiDirect`).

A body with an OpenAI parameter this path does not map (outside the provider config's
supported OpenAI params) takes the full `Router.acompletion` path instead, so nothing is
dropped silently. Bodies reach this module already cut to OpenAI's parameters (the egress,
app/request_params.py), so that fallback can never carry a LiteLLM control argument
(`api_base`, `api_key`, ...) to the Router; `_build` cuts again before mapping.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator

import aiohttp

from app.errors import UpstreamError
from app.request_params import provider_body
from deployments.provider_errors import provider_errors
from deployments.stream_shape import openai_chat_stream

ANTHROPIC_URL = "https://api.anthropic.com"
_MESSAGE_KEYS = ("model", "messages", "stream", "stream_options")
# Parameters that never change Anthropic's request headers (beta flags come from tools, thinking,
# cache control, files, ...): with only these and plain-text messages the headers are cached.
_PLAIN_PARAMS = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "user"})


class _NoLogging:
    """The logging object LiteLLM's transformations report to; the gateway has its own.
    (Gemini's parsers read the call's `optional_params` off it.)"""

    def __init__(self, optional_params: dict[str, Any] | None = None) -> None:
        self.optional_params = optional_params or {}

    def post_call(self, *args: Any, **kwargs: Any) -> None:
        return None

    def pre_call(self, *args: Any, **kwargs: Any) -> None:
        return None


def _error(status: int, raw: bytes) -> UpstreamError:
    """The provider's error as an UpstreamError with its own status (529 stays 529)."""
    try:
        err = json.loads(raw).get("error")
        msg = err.get("message") if isinstance(err, dict) else str(err)
        kind = (err.get("type") or err.get("status")) if isinstance(err, dict) else None
        msg = f"{kind}: {msg}" if kind else msg
    except (ValueError, AttributeError):
        msg = raw[:200].decode(errors="replace") or "no body"
    return UpstreamError(status, f"provider error - {msg}")


def _copy_messages(body: dict[str, Any]) -> list[Any]:
    """The messages, copied one level deep: LiteLLM's transformations may edit them in place,
    and the same body is sent again on a retry or a fallback tier."""
    return [dict(m) if isinstance(m, dict) else m for m in body.get("messages") or []]


class _Direct:
    """One provider's chat calls through its LiteLLM config, posted over the egress's session.

    Subclasses say how to build the request (`_build`), which SSE events end or fail a stream
    (`_event`) and which LiteLLM stream parser reads the events (`_parser`).
    """

    provider = ""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._supported: dict[str, frozenset[str]] = {}
        self._log = _NoLogging()

    def handles(self, params: dict[str, Any], body: dict[str, Any]) -> bool:
        """True for this provider's deployment and a body whose every parameter this path maps."""
        provider, _, model = str(params.get("model", "")).partition("/")
        if provider != self.provider or "mock_response" in params or not model:
            return False
        supported = self._supported.get(model)
        if supported is None:
            supported = self._supported[model] = frozenset(self.config.get_supported_openai_params(model))
        # `drop_params: true` (the operator's): LiteLLM's mapping leaves out what the provider cannot take
        return bool(params.get("drop_params")) or all(k in supported or k in _MESSAGE_KEYS for k in body)

    def _build(self, params: dict[str, Any], body: dict[str, Any], stream: bool) -> tuple[str, dict, dict, dict]:
        """(url, headers, provider request body, context for the answer's transformation).

        What every provider shares: the model without its prefix, the messages (copied), the
        OpenAI parameters mapped by the provider's config; `_request` builds the rest.
        """
        model = str(params["model"]).partition("/")[2]
        messages = _copy_messages(body)
        extra = {k: v for k, v in provider_body("chat", body).items() if k not in _MESSAGE_KEYS}
        litellm_params: dict[str, Any] = {}
        api_key = params.get("api_key")
        try:
            optional = self.config.map_openai_params(extra, {}, model, drop_params=False)
            # a response_format Anthropic answers through a forced tool: LiteLLM's handler pops the
            # flag before the request and gives it to the answer's transformation, which turns
            # that tool call back into the JSON content the client asked for
            json_mode = bool(optional.pop("json_mode", False))
            if stream:
                optional["stream"] = True
            url, headers, data = self._request(model, messages, extra, optional, litellm_params, params, stream)
        except Exception as e:  # LiteLLM refuses the request (bad messages, tool shape): the client's
            raise self._refused(e) from None
        ctx = {"model": model, "messages": messages, "optional": optional, "litellm_params": litellm_params,
               "api_key": api_key, "log": self._log_for(optional), "json_mode": json_mode,
               "include_usage": bool((body.get("stream_options") or {}).get("include_usage"))}
        return url, headers, data, ctx

    def _request(self, model: str, messages: list, extra: dict[str, Any], optional: dict[str, Any],
                 litellm_params: dict[str, Any], params: dict[str, Any], stream: bool) -> tuple[str, dict, dict]:
        """The provider's (url, headers, request body); LiteLLM errors raised here are the client's."""
        raise NotImplementedError

    def _log_for(self, optional: dict[str, Any]) -> Any:
        """The logging object LiteLLM's answer transformation and stream parser get."""
        return self._log

    def _parser(self, ctx: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _event(self, event: dict[str, Any]) -> bool:
        """False when the event ends the stream; raises UpstreamError for an error event."""
        return True

    @staticmethod
    def _refused(e: Exception) -> UpstreamError:
        status = getattr(e, "status_code", None)
        return UpstreamError(status if isinstance(status, int) and status >= 400 else 400,
                             f"{type(e).__name__}: {e}")


    async def call(self, session: aiohttp.ClientSession, params: dict[str, Any], body: dict[str, Any],
                   timeout: float) -> dict[str, Any]:
        import httpx
        from litellm.types.utils import ModelResponse

        url, headers, data, ctx = self._build(params, body, stream=False)
        with provider_errors(timeout, stream=False):  # the body is parsed below, by the transformation
            async with session.post(url, json=data, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise _error(resp.status, raw)
        response = httpx.Response(200, content=raw, request=httpx.Request("POST", url))
        try:
            out = self.config.transform_response(ctx["model"], response, ModelResponse(), ctx["log"], data,
                                                 ctx["messages"], ctx["optional"], ctx["litellm_params"], None,
                                                 ctx["api_key"], json_mode=ctx["json_mode"])
        except Exception as e:
            raise UpstreamError(502, f"provider sent an answer LiteLLM cannot read: {e}") from None
        return out.model_dump(exclude_none=True)

    async def stream(self, session: aiohttp.ClientSession, params: dict[str, Any], body: dict[str, Any],
                     timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The provider's events as OpenAI chunks, shaped as the Router path's are (one finish
        reason, last; usage alone after it): Gemini's parser says "stop" on every chunk."""
        url, headers, data, ctx = self._build(params, body, stream=True)
        async for chunk in openai_chat_stream(self._chunks(session, url, headers, data, ctx, timeout)):
            yield chunk

    async def _chunks(self, session: aiohttp.ClientSession, url: str, headers: dict, data: dict,
                      ctx: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        parser = self._parser(ctx)
        head: dict[str, Any] = {}
        with provider_errors(timeout, stream=True, invalid="provider sent an invalid stream event"):
            async with session.post(url, json=data, headers=headers,
                                    timeout=aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)) as resp:
                if resp.status >= 400:
                    raise _error(resp.status, await resp.read())
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    event = json.loads(line[5:])
                    if not self._event(event):
                        break
                    parsed = parser.chunk_parser(event)
                    if parsed is None:
                        continue
                    chunk = parsed.model_dump(exclude_none=True)
                    if not head:
                        head = {"id": chunk.get("id"), "object": "chat.completion.chunk",
                                "created": chunk.get("created") or int(time.time()), "model": ctx["model"]}
                    choice = (chunk.get("choices") or [{}])[0]
                    delta = choice.get("delta") or {}
                    if not delta.get("content") and not delta.get("tool_calls"):
                        # message_start, ping, block boundaries: nothing for an OpenAI client but a finish reason
                        choice = {k: v for k, v in choice.items() if k != "delta"}
                    usage = chunk.get("usage") if ctx["include_usage"] else None
                    yield {**head, "choices": [choice], **({"usage": usage} if usage else {})}


class AnthropicDirect(_Direct):
    """Anthropic Messages: LiteLLM's AnthropicConfig and its Anthropic stream parser."""

    provider = "anthropic"

    def __init__(self) -> None:
        from litellm.llms.anthropic.chat.transformation import AnthropicConfig

        super().__init__(AnthropicConfig())
        self._headers: dict[tuple[str, str | None, str], dict[str, str]] = {}

    def _request(self, model: str, messages: list, extra: dict[str, Any], optional: dict[str, Any],
                 litellm_params: dict[str, Any], params: dict[str, Any], stream: bool) -> tuple[str, dict, dict]:
        base = str(params.get("api_base") or ANTHROPIC_URL).rstrip("/")
        headers = self._env(model, messages, extra, optional, params.get("api_key"), base)
        data = self.config.transform_request(model, messages, optional, litellm_params, headers)
        url = base if base.endswith("/v1/messages") else base + "/v1/messages"
        return url, headers, data

    def _env(self, model: str, messages: list, extra: dict[str, Any], optional: dict[str, Any],
             api_key: str | None, base: str) -> dict[str, str]:
        """Anthropic's request headers; LiteLLM's validate_environment (~0.3 ms: it looks model
        capabilities up each call) runs once per deployment for plain-text requests."""
        plain = extra.keys() <= _PLAIN_PARAMS and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.keys() <= {"role", "content", "name"}
            for m in messages)
        key = (model, api_key, base)
        if plain and key in self._headers:
            return dict(self._headers[key])
        headers = self.config.validate_environment({}, model, messages, optional, {}, api_key, base)
        if plain:
            self._headers[key] = dict(headers)
        return headers

    def _parser(self, ctx: dict[str, Any]) -> Any:
        from litellm.llms.anthropic.chat.handler import ModelResponseIterator
        from litellm.llms.anthropic.chat.transformation import ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY

        names = ctx["litellm_params"].get(ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY)
        return ModelResponseIterator(streaming_response=None, sync_stream=False, json_mode=ctx["json_mode"],
                                     tool_name_reverse_map=names)

    def _event(self, event: dict[str, Any]) -> bool:
        if event.get("type") == "message_stop":
            return False
        if event.get("type") == "error":
            err = event.get("error") or {}
            status = 529 if err.get("type") == "overloaded_error" else 502
            raise UpstreamError(status, f"AnthropicException - {err.get('type')}: {err.get('message')}")
        return True


class GeminiDirect(_Direct):
    """Gemini (Google AI Studio): LiteLLM's GoogleAIStudioGeminiConfig, its request-body
    transformation and its Gemini stream parser. Context caching (`cache_control` in the
    messages) needs LiteLLM's caching calls first, so such bodies take Router.acompletion."""

    provider = "gemini"

    def __init__(self) -> None:
        from litellm.llms.gemini.chat.transformation import GoogleAIStudioGeminiConfig
        from litellm.llms.vertex_ai.gemini.vertex_and_google_ai_studio_gemini import VertexLLM

        super().__init__(GoogleAIStudioGeminiConfig())
        self._urls = VertexLLM()  # LiteLLM's own URL/auth rules for `gemini/` (api_base or Google's)

    def handles(self, params: dict[str, Any], body: dict[str, Any]) -> bool:
        return super().handles(params, body) and "cache_control" not in json.dumps(body.get("messages") or [])

    def _request(self, model: str, messages: list, extra: dict[str, Any], optional: dict[str, Any],
                 litellm_params: dict[str, Any], params: dict[str, Any], stream: bool) -> tuple[str, dict, dict]:
        from litellm.llms.vertex_ai.gemini.transformation import transform_request_body

        auth, url = self._urls._get_token_and_url(
            model=model, auth_header=None, gemini_api_key=params.get("api_key"), vertex_project=None,
            vertex_location=None, vertex_credentials=None, stream=stream, custom_llm_provider="gemini",
            api_base=params.get("api_base"))
        headers = self.config.validate_environment(headers=None, model=model, messages=messages,
                                                   optional_params=optional, litellm_params=litellm_params,
                                                   api_key=auth)
        data = transform_request_body(messages=messages, model=model, optional_params=optional,
                                      custom_llm_provider="gemini", litellm_params=litellm_params,
                                      cached_content=None)
        return url, headers, dict(data)

    def _log_for(self, optional: dict[str, Any]) -> Any:
        return _NoLogging(optional)  # Gemini's parsers read the call's optional params off it

    def _parser(self, ctx: dict[str, Any]) -> Any:
        from litellm.llms.vertex_ai.gemini.vertex_and_google_ai_studio_gemini import ModelResponseIterator

        return ModelResponseIterator(streaming_response=None, sync_stream=False, logging_obj=ctx["log"])

