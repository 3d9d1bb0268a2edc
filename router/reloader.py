"""Hot reload of the router artifact: load in the background, swap atomically, never block a request.

`ArtifactSlot` holds the engine that requests read (`slot.current`, one attribute read, so a
request sees either the old engine or the new one, never half of each). `request(target)` starts
a load in a worker thread and returns at once; the old engine keeps serving until the new one
is verified and built, then a single assignment swaps them. Loads are numbered: a slower, older
load that finishes after a newer one is discarded.

A load that fails (artifact missing, corrupt, wrong signature, unknown featurizer) leaves the
slot *degraded*: `current` becomes None and the router answers with its static fallback strategy.
The requested artifact is what the operator asked for; one that no longer verifies is not served,
and neither is an older one in its place, so what runs is always either the requested artifact
or the documented fallback. A later `request` (reconfigure) or a poll that finds a loadable
artifact recovers.

Poll mode (`router.poll_interval_s > 0`): every interval, if the target is `latest` and the
registry's `latest` names another version than the one loaded (or the slot is degraded), load it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from app.config import ConfigError, DokaConfig, resolve_secret

logger = logging.getLogger("ray.serve")

T = TypeVar("T")

_warned_dev_key: set[str] = set()


def router_signing_key(cfg: DokaConfig) -> bytes | None:
    """The HMAC key that artifacts must verify with.

    Order: `router.signing_key` (by default `os.environ/DOKA_SIGNING_KEY`), then the file named
    by `DOKA_SIGNING_KEY_FILE`, then the local dev key `<data_dir>/signing.key` that
    `doka router bootstrap` creates (with a warning: production sets DOKA_SIGNING_KEY). None means
    no key at all: every artifact is then refused, because unsigned artifacts are never loaded.
    """
    raw = cfg.router.signing_key
    if raw:
        try:
            value = resolve_secret(raw)
        except ConfigError:  # the env var is not set: look for a key file below
            value = None
        if value:
            return str(value).encode()
    path = Path(os.environ.get("DOKA_SIGNING_KEY_FILE") or cfg.data_path("signing.key"))
    if path.is_file() and path.read_text().strip():
        if str(path) not in _warned_dev_key:
            _warned_dev_key.add(str(path))
            logger.warning("router: DOKA_SIGNING_KEY is not set; verifying artifacts with the key file %s "
                           "(fine for a local run; set DOKA_SIGNING_KEY in production)", path)
        return path.read_text().strip().encode()
    return None


@dataclass(frozen=True)
class Target:
    """What the operator asked for: a registry and a version (or `latest`)."""

    registry: str | None
    artifact: str = "latest"


class ArtifactSlot(Generic[T]):
    """The current engine plus its background loader and status."""

    def __init__(self, load: Callable[[Target], T], version_of: Callable[[T], str],
                 latest_of: Callable[[Target], str | None]) -> None:
        self._load = load
        self._version_of = version_of
        self._latest_of = latest_of
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="doka-artifact-load")
        self.current: T | None = None
        self.target: Target | None = None
        self.state = "idle"  # idle | loading | ready | degraded
        self.reason = "no artifact requested"
        self.loaded_at: float | None = None
        self.loads = 0  # successful swaps, for tests and the status detail
        self._generation = 0
        self._task: asyncio.Task | None = None
        self._poll_task: asyncio.Task | None = None

    # ---- requests ----
    def request(self, target: Target) -> asyncio.Task:
        """Start loading `target` in the background; returns the task (awaiting it is optional)."""
        self._generation += 1
        self.target = target
        if self.current is None:
            self.state = "loading"
            self.reason = f"loading {target.artifact} from {target.registry}"
        self._task = asyncio.get_running_loop().create_task(self._run(self._generation, target))
        return self._task

    def clear(self, reason: str) -> None:
        """No learned router wanted (a static strategy is configured)."""
        self._generation += 1
        self.current, self.target, self.state, self.reason = None, None, "idle", reason

    async def _run(self, generation: int, target: Target) -> bool:
        started = time.perf_counter()
        try:
            engine = await asyncio.get_running_loop().run_in_executor(self._pool, self._load, target)
        except Exception as e:  # noqa: BLE001 - any failure means "serve the fallback", never crash
            if generation != self._generation:
                return False
            self.current = None
            self.state = "degraded"
            self.reason = f"{type(e).__name__}: {e}"[:500]
            logger.warning("router: artifact %s from %s not loaded (%s); serving the fallback strategy",
                           target.artifact, target.registry, self.reason)
            return False
        if generation != self._generation:  # a newer request superseded this load
            return False
        self.current = engine  # the atomic swap
        self.state, self.loaded_at, self.loads = "ready", time.time(), self.loads + 1
        self.reason = f"loaded {self._version_of(engine)} in {(time.perf_counter() - started) * 1000:.0f} ms"
        logger.info("router: now serving artifact %s (%s)", self._version_of(engine), self.reason)
        return True

    # ---- poll mode ----
    def start_polling(self, interval_s: float) -> None:
        if self._poll_task is not None and not self._poll_task.done():
            self._poll_task.cancel()
        self._poll_task = None
        if interval_s > 0:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll(interval_s))

    async def _poll(self, interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            target = self.target
            if target is None or (self._task is not None and not self._task.done()):
                continue
            try:
                if target.artifact == "latest":
                    latest = await loop.run_in_executor(self._pool, self._latest_of, target)
                    current = self._version_of(self.current) if self.current is not None else None
                    if latest is not None and (latest != current or self.state == "degraded"):
                        logger.info("router: registry latest is %s (serving %s); loading it", latest, current)
                        await self.request(target)
                elif self.state == "degraded":
                    await self.request(target)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a registry hiccup must not stop polling or serving
                logger.warning("router: registry poll failed: %r", e)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "artifact_version": self._version_of(self.current) if self.current is not None else None,
            "target": None if self.target is None else {"registry": self.target.registry, "artifact": self.target.artifact},
            "reason": self.reason,
            "loaded_at": self.loaded_at,
            "loads": self.loads,
            "loading": self._task is not None and not self._task.done(),
            "polling": self._poll_task is not None and not self._poll_task.done(),
        }
