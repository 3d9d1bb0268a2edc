"""Each vLLM tier is its own Serve application; this module names them and watches them (Ray-free).

Serve deploys, fails and retries per application: an LLMServer whose engine cannot start
(corrupt weights, an engine crash, out of memory) marks only its own application DEPLOY_FAILED,
never the gateway's. The ingress reaches a tier's LLMServer by (deployment, application) name,
and `TierWatch` keeps a cached view of those applications' Serve status, so chains skip a tier
that is not serving, readiness names it with Serve's message, and a tier redeployed healthy comes
back without restarting the gateway. The status fetch is injected: the ingress passes one that
calls `serve.status()`, the unit tests a plain function.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from app.config import DokaConfig

TIER_BUILDER = "app.graph:tier_app_builder"  # import path of one tier's application
MAX_REASON_CHARS = 400


def deployment_name(model: str) -> str:
    """The LLMServer deployment's name in its tier application (ray.serve.llm's own naming)."""
    return "LLMServer:" + model.replace("/", "--").replace(".", "_")


def app_name(cfg: DokaConfig, model: str) -> str:
    """The Serve application of one vLLM tier: `<server.app_name>-tier-<model>`."""
    return f"{cfg.server.app_name}-tier-" + re.sub(r"[^A-Za-z0-9_.:-]", "-", model)


def tier_apps(cfg: DokaConfig) -> dict[str, dict[str, str]]:
    """model -> {"app": ..., "deployment": ...} for every `provider: vllm` model of the config."""
    return {m.model_name: {"app": app_name(cfg, m.model_name), "deployment": deployment_name(m.model_name)}
            for m in cfg.model_list if m.provider == "vllm"}


@dataclass(frozen=True)
class AppState:
    """What the ingress needs of one Serve application's status."""

    status: str  # Serve's ApplicationStatus: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, ...
    message: str = ""
    running_replicas: int = 0  # RUNNING replicas over its deployments (a rolling update still serves)


def short_message(message: str) -> str:
    """Serve's message cut to what a person reads first: its first line and, for a traceback,
    the exception at its end."""
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0] if len(lines) == 1 or lines[-1] == lines[0] else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def reason_down(app: str, state: AppState | None) -> str | None:
    """Why the tier in application `app` is not serving now, or None when it serves."""
    if state is None:
        return f"not deployed (Serve has no application {app})"
    if state.status == "RUNNING" or state.running_replicas > 0:
        return None
    if state.status in ("DEPLOYING", "NOT_STARTED"):
        return f"starting (Serve application {app} is {state.status})"
    detail = short_message(state.message)
    return f"Serve application {app} is {state.status}" + (f": {detail}" if detail else "")


def tiers_starting(tiers: dict[str, str], states: dict[str, AppState]) -> list[str]:
    """The tier models (model -> its application) still coming up: neither serving nor failed."""
    return sorted(m for m, app in tiers.items() if (st := states.get(app)) is None
                  or (st.status not in ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY") and not st.running_replicas))


StatusFetch = Callable[[], Awaitable[dict[str, AppState]]]


class TierWatch:
    """A cached view of the tier applications' states, refreshed at most every `interval_s`.

    `check(model)` is the hot path: a tier known to serve costs nothing (a stale view refreshes in
    the background); a tier known down, or never seen, waits for one refresh first, so a
    redeployed tier is used again at its first request after it runs. Refreshes are single-flight:
    concurrent callers share one fetch. A failed fetch keeps the last view.
    """

    def __init__(self, apps: dict[str, str], fetch: StatusFetch, interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, fetch_timeout_s: float = 5.0) -> None:
        self._apps = dict(apps)  # model -> Serve application name
        self._fetch, self._interval, self._clock = fetch, interval_s, clock
        self._fetch_timeout = fetch_timeout_s  # a controller that does not answer: keep the last view
        self._down: dict[str, str] | None = None  # None: never fetched
        self._at = float("-inf")
        self._inflight: asyncio.Task | None = None
        self.last_error: str | None = None

    def __contains__(self, model: object) -> bool:
        return model in self._apps

    @property
    def down(self) -> dict[str, str]:
        """model -> reason, as last seen (a never-fetched view counts every tier as unknown)."""
        if self._down is None:
            return {m: "status not checked yet" for m in self._apps}
        return dict(self._down)

    def _stale(self) -> bool:
        return self._clock() - self._at >= self._interval

    async def _do_refresh(self) -> None:
        try:
            states = await asyncio.wait_for(self._fetch(), self._fetch_timeout)
        except Exception as e:  # noqa: BLE001 - keep the last view; readiness shows the error
            self.last_error = f"{type(e).__name__}: {e}"
            if self._down is None:
                self._down = {}  # unknown is not down: calls go through and fail over on error
        else:
            self.last_error = None
            self._down = {m: why for m, app in self._apps.items()
                          if (why := reason_down(app, states.get(app))) is not None}
        finally:
            self._at = self._clock()

    async def refresh(self) -> dict[str, str]:
        """Fetch now unless the view is fresh; returns model -> reason for tiers not serving."""
        if self._apps and self._stale():
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.ensure_future(self._do_refresh())
            await asyncio.shield(self._inflight)
        return self.down

    async def check(self, model: str) -> str | None:
        """Why `model` (a tier application's model) should be skipped now, or None to call it."""
        if model not in self._apps:
            return None
        if self._down is None or (model in self._down and self._stale()):
            await self.refresh()
        elif self._stale() and (self._inflight is None or self._inflight.done()):
            self._inflight = asyncio.ensure_future(self._do_refresh())  # the answer is not waited for
        return (self._down or {}).get(model)


def states_from_serve_status(status: object) -> dict[str, AppState]:
    """`ray.serve.status()`'s ServeStatus as app name -> AppState (duck-typed: no Ray import)."""
    out: dict[str, AppState] = {}
    for name, app in (getattr(status, "applications", None) or {}).items():
        running, messages = 0, [str(getattr(app, "message", "") or "")]
        for dep in (getattr(app, "deployments", None) or {}).values():
            running += sum(n for s, n in (getattr(dep, "replica_states", None) or {}).items()
                           if str(getattr(s, "value", s)) == "RUNNING")
            if getattr(dep, "message", ""):
                messages.append(str(dep.message))
        raw = getattr(app, "status", "")
        out[name] = AppState(str(getattr(raw, "value", raw)),
                             "\n".join(m for m in messages if m.strip()), running)
    return out
