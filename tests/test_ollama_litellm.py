"""LiteLLM's `ollama_chat/` provider as the egress runs it: against the in-repo Ollama mock, with
doka's config registered in LiteLLM's cost map (deployments/ollama.py), so LiteLLM never calls an
Ollama server's `/api/show` (it would, at localhost:11434, synchronously, on every call)."""

from __future__ import annotations

import asyncio

import httpx

from app.config import parse_config
from deployments.ollama import ollama_cost_map, register_ollama_models


def _cfg(mock_url: str, **info) -> object:
    return parse_config({"model_list": [
        {"model_name": "cpu", "litellm_params": {"model": "ollama_chat/unit-test-model:1b", "api_base": mock_url},
         "model_info": {"tier": "local", "timeout": 30, "context_window": 8192, "supports_tools": True, **info}},
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": mock_url + "/v1"}}]})


def test_the_cost_map_entry_comes_from_the_config():
    cfg = _cfg("http://ollama.lan:11434")
    assert ollama_cost_map(cfg) == {"ollama_chat/unit-test-model:1b": {
        "litellm_provider": "ollama_chat", "mode": "chat", "input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
        "max_tokens": 8192, "max_input_tokens": 8192, "supports_function_calling": True}}
    priced = _cfg("http://ollama.lan:11434", input_cost_per_token=1e-7, output_cost_per_token=2e-7)
    entry = ollama_cost_map(priced)["ollama_chat/unit-test-model:1b"]
    assert (entry["input_cost_per_token"], entry["output_cost_per_token"]) == (1e-7, 2e-7)


def test_litellm_calls_no_ollama_server_for_model_info_once_registered(mock, monkeypatch):
    import litellm

    cfg = _cfg(mock.url)
    assert register_ollama_models(cfg) == ["ollama_chat/unit-test-model:1b"]
    urls: list[str] = []
    send = httpx.Client.send
    monkeypatch.setattr(httpx.Client, "send", lambda self, req, *a, **k: urls.append(str(req.url)) or send(self, req, *a, **k))
    router = litellm.Router(model_list=[{"model_name": "cpu", "litellm_params": dict(cfg.model("cpu").litellm_params)}])

    async def both() -> tuple:
        plain = await router.acompletion(model="cpu", messages=[{"role": "user", "content": "hi there"}])
        chunks = [c async for c in await router.acompletion(model="cpu", messages=[{"role": "user", "content": "hi"}],
                                                            stream=True, stream_options={"include_usage": True})]
        await asyncio.sleep(0.5)  # LiteLLM's logging of the calls runs after them
        return plain, chunks

    plain, chunks = asyncio.run(both())
    assert plain.choices[0].message.content.startswith("mock answer from unit-test-model:1b")
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (2, 8)
    assert plain._hidden_params.get("response_cost") == 0.0
    assert [(c.usage.prompt_tokens, c.usage.completion_tokens) for c in chunks if getattr(c, "usage", None)] == [(1, 8)]
    assert not [u for u in urls if "/api/show" in u], urls
