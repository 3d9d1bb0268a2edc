"""One small interface between the ingress's fallback chain and whatever serves a model.

The ingress only knows `ModelBackend` (keyed by model name); it never cares whether a model
lives behind the LiteLLM egress or a vLLM deployment. A backend returns OpenAI-shaped dicts
and streams OpenAI chunk dicts, and raises `app.errors.UpstreamError` for a failed attempt.

Adding a provider = one class here (or in its own module) + one entry in `BACKENDS`:
`deployments.vllm` may export `VLLMBackend(handle)`; it is picked up when present.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Protocol

from ray.serve.handle import DeploymentHandle


class ModelBackend(Protocol):
    async def chat(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...
    def chat_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]: ...
    async def completion(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...
    def completion_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]: ...
    async def embedding(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...


class HandleBackend:
    """A deployment exposing the backend methods itself (the egress does): one handle call each.

    Streams use a streaming handle, so chunks pass through one by one; closing the iterator
    (client gone, or the ingress gave up on this tier) cancels the call in the deployment.
    """

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)

    async def chat(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await _cancel_on_exit(self._handle.chat.remote(model, body, timeout))

    async def completion(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await _cancel_on_exit(self._handle.completion.remote(model, body, timeout))

    async def embedding(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await _cancel_on_exit(self._handle.embedding.remote(model, body, timeout))

    def chat_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        return _iterate(self._stream.chat_stream.remote(model, body, timeout))

    def completion_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        return _iterate(self._stream.completion_stream.remote(model, body, timeout))


async def _cancel_on_exit(response: Any) -> Any:
    try:
        return await response
    except BaseException:
        response.cancel()
        raise


async def _iterate(gen: Any) -> AsyncIterator[dict[str, Any]]:
    finished = False
    try:
        async for chunk in gen:
            yield chunk
        finished = True
    finally:
        if not finished:
            gen.cancel()


BackendFactory = Callable[[DeploymentHandle], ModelBackend]


def backend_factories() -> dict[str, BackendFactory]:
    """Provider name -> adapter class; vLLM joins when its module is importable."""
    factories: dict[str, BackendFactory] = {"litellm": HandleBackend}
    try:
        from deployments.vllm import VLLMBackend  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:
        factories["vllm"] = VLLMBackend
    return factories
