"""The gateway core (app/request/) with fake backends and router, and the real accounts core.

No Ray: `GatewayCore` is built as the ingress builds it, but its backends are scripted
in-process tiers, its router is a fake that names the model, and the accounts are the real
`GatewayAccounts` over an in-process `AccountsCore` on SQLite (real keys, quotas and ledger
rows), so settle-once is checked on the rows themselves. Observability is the real one.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.requests import Request

from accounts.actor import core_kwargs
from accounts.core import AccountsCore
from accounts.gateway import GatewayAccounts
from app import capabilities
from app.config import DokaConfig, parse_config
from app.errors import UpstreamError
from app.request.core import GatewayCore
from app.request.ledger import NoAccounts
from app.request.tiers import Tiers
from deployments import stalls
from observability.gateway import Observability
from router.decision import RouteDecision
from tests.conftest import gateway_test_config

MASTER = "sk-core-master"


@dataclass
class Script:
    """How a fake tier answers: text, or fail with an upstream status, after `delay` seconds.
    Streams send `chunks` pieces, then usage (unless `usage` is False); `stall_after`: go quiet
    after that many chunks."""

    text: str = "hello"
    fail: int | None = None
    delay: float = 0.0
    chunks: int = 3
    usage: bool = True
    stall_after: int | None = None
    chunk_delay: float = 0.0


def completion(model: str, text: str) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": f"upstream/{model}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


class FakeTiers:
    """Every model's backend: scripted per model, every call recorded (model, kind)."""

    def __init__(self) -> None:
        self.script: dict[str, Script] = {}
        self.calls: list[tuple[str, str]] = []
        self.open_streams = 0

    def _of(self, model: str) -> Script:
        return self.script.get(model, Script())

    async def _answer(self, model: str, kind: str) -> dict[str, Any]:
        self.calls.append((model, kind))
        s = self._of(model)
        await asyncio.sleep(s.delay)
        if s.fail is not None:
            raise UpstreamError(s.fail, f"{model} scripted failure {s.fail}")
        return completion(model, s.text)

    async def chat(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self._answer(model, "chat")

    async def completion(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self._answer(model, "completion")

    async def embedding(self, model: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.calls.append((model, "embedding"))
        return {"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
                "usage": {"prompt_tokens": 3, "total_tokens": 3}}

    def chat_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._stream(model)

    def completion_stream(self, model: str, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        return self._stream(model)

    async def _stream(self, model: str) -> AsyncIterator[dict[str, Any]]:
        self.calls.append((model, "stream"))
        s = self._of(model)
        self.open_streams += 1
        try:
            await asyncio.sleep(s.delay)
            if s.fail is not None:
                raise UpstreamError(s.fail, f"{model} scripted failure {s.fail}")
            for i in range(s.chunks):
                if s.stall_after is not None and i >= s.stall_after:
                    await asyncio.sleep(3600)
                await asyncio.sleep(s.chunk_delay)
                yield {"id": "s1", "object": "chat.completion.chunk", "model": f"upstream/{model}",
                       "choices": [{"index": 0, "delta": {"content": f"{s.text}{i} "}, "finish_reason": None}]}
            if s.usage:
                yield {"id": "s1", "object": "chat.completion.chunk", "model": f"upstream/{model}", "choices": [],
                       "usage": {"prompt_tokens": 10, "completion_tokens": s.chunks, "total_tokens": 10 + s.chunks}}
        finally:
            self.open_streams -= 1


class FakeRouter:
    """The router port: answers `pick` (or the first candidate), records what it was offered."""

    def __init__(self, pick: str | None = None, familiar: bool | None = None) -> None:
        self.pick, self.familiar = pick, familiar
        self.offered: list[list[str]] = []
        self.failures: list[str] = []

    def route(self, prompt: str, cost_weight: float | None, candidates: list[str]) -> "asyncio.Task[RouteDecision]":
        self.offered.append(list(candidates))

        async def decide() -> RouteDecision:
            model = self.pick if self.pick in candidates else candidates[0]
            return RouteDecision(model, "fake", 0.5, "fake router", familiar=self.familiar)

        return asyncio.ensure_future(decide())

    def report(self, model: str, ok: bool) -> None:
        if not ok:
            self.failures.append(model)

    async def status(self) -> dict[str, Any]:
        return {"strategy": "fake", "degraded": False}


def core_config(tmp: Path, keyed: bool = True, **models: dict[str, Any]) -> DokaConfig:
    """config/default.yaml as the tests use it (no vLLM), data under `tmp`; `models`: model_info
    changes by model name (e.g. `**{"mock-mixtral": {"timeout": 0.2}}`)."""
    raw = gateway_test_config(9, 10)
    raw["server"]["data_dir"] = str(tmp)
    if keyed:
        raw["accounts"] = {"require_keys": True, "master_key": MASTER, "transport": "actor"}
    for m in raw["model_list"]:
        m.setdefault("model_info", {}).update(models.get(m["model_name"], {}))
    return parse_config(raw)


class Gateway:
    """A `GatewayCore` wired as the ingress wires it, with the fakes above."""

    def __init__(self, cfg: DokaConfig, tiers: FakeTiers | None = None, router: FakeRouter | None = None,
                 down: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.tiers = tiers or FakeTiers()
        self.router = router or FakeRouter()
        self.obs = Observability(cfg, mirror_to_ray=False)
        names = [m.model_name for m in cfg.model_list if m.model_name not in (down or {})]
        backends = self.obs.wrap_backends({n: self.tiers for n in names})
        self.accounts: Any = NoAccounts()
        if cfg.accounts.require_keys:
            self.accounts = GatewayAccounts(cfg, AccountsCore(**core_kwargs(cfg)))
        t = Tiers(backends, {m.model_name: m.model_info.timeout for m in cfg.model_list},
                  stalls.tier_timeouts(cfg), dict(down or {}))
        caps = capabilities.resolve_all(cfg, lambda model: None)
        self.core = GatewayCore(cfg, t, caps, self.router, self.accounts, self.obs,
                                getattr(self.accounts, "providers", None))

    async def key(self, **fields: Any) -> str:
        """A new virtual key (admin call on the real accounts core)."""
        return (await self.accounts.accounts.call("generate_key", fields))["key"]

    async def rows(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The ledger rows (all, or one request's), after the settlements in flight finished."""
        pending = self.core.pending()
        if pending:
            await asyncio.wait(pending, timeout=10)
        rows = await self.accounts.accounts.call("ledger")
        return [r for r in rows if request_id is None or r["request_id"] == request_id]

    async def reserved(self) -> int:
        """Reservations the accounts core still holds (0 once every request settled)."""
        return (await self.accounts.accounts.call("stats"))["reservations"]


def http_request(body: dict[str, Any] | None = None, key: str | None = None, path: str = "/v1/chat/completions",
                 headers: dict[str, str] | None = None) -> Request:
    """A Starlette request as Serve hands it to the ingress (body read from the ASGI stream)."""
    raw = json.dumps(body).encode() if body is not None else b""
    hdrs = {"content-type": "application/json", "content-length": str(len(raw)), **(headers or {})}
    if key:
        hdrs["authorization"] = f"Bearer {key}"
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
             "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "scheme": "http"}
    return Request(scope, receive)


async def read_stream(response: Any, stop_after: int | None = None) -> list[bytes]:
    """Run a streaming response as Serve would; with `stop_after`, the client leaves (the ASGI
    task is cancelled) after that many body messages."""
    bodies: list[bytes] = []
    got_enough = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            bodies.append(message["body"])
            if stop_after is not None and len(bodies) >= stop_after:
                got_enough.set()

    task = asyncio.ensure_future(response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send))
    if stop_after is None:
        await task
        return bodies
    waiter = asyncio.ensure_future(got_enough.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    task.cancel()  # the client went away: Serve cancels the request's ASGI task
    try:
        await task
    except asyncio.CancelledError:
        pass
    return bodies


CHAT = {"messages": [{"role": "user", "content": "What is 2 + 2?"}]}
