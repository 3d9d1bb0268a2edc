"""The accounts core's provider-limit calls (rpm/tpm/rpd/tpd per model, accounts.provider_limits),
counted in the one accounts process for every ingress replica. A mixin of `AccountsCore`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from accounts import db
from accounts.errors import ok
from accounts.provider_limits import Hold

log = logging.getLogger("doka.accounts")


class ProviderLimitCalls:
    """Admit, settle and release provider-limit holds; what is left, for /metrics."""

    async def _load_provider_usage(self) -> None:
        """Once: the current windows' counts from the database, so a restart resets no limit.

        A database that is down leaves the counts at what this process saw (admission goes on:
        a limit must not take the gateway down) and the load is tried again on the next call.
        """
        if self._plimits_loaded:
            return
        if self._plimits_loading is not None:
            return await asyncio.shield(self._plimits_loading)
        fut = self._plimits_loading = asyncio.get_running_loop().create_future()
        try:
            rows = await self._db(db.load_provider_usage, self.plimits.wanted(time.time()))
            self.plimits.load(rows, time.time())
            self._plimits_loaded = True
        except Exception as e:
            log.warning("accounts: provider usage not loaded (%r); counting from what this process saw", e)
        finally:
            self._plimits_loading = None
            fut.set_result(None)

    async def provider_admit(self, model: str, tokens: int, owner: str | None = None) -> dict[str, Any]:
        """Hold one call to `model` (and `tokens`, its worst case) within its provider limits.

        `{"ok": {"hold": id}}`, `{"ok": {"refused": {...limit, retry_after...}}}`, or
        `{"ok": {}}` for a model without limits. Decided with no await between check and hold.
        """
        if self.plimits.limited(model):
            await self._load_provider_usage()
        if owner is not None:
            self._owners[owner] = time.monotonic()
        got = self.plimits.admit(model, tokens, time.time(), owner)
        if got is None:
            return ok({})
        if isinstance(got, Hold):
            return ok({"hold": got.id})
        return ok({"refused": got.to_dict()})

    async def provider_settle(self, hold_id: str, tokens: int) -> dict[str, Any]:
        """The call was made: count it with the tokens it used. False: closed already."""
        return ok(self.plimits.settle(hold_id, tokens, time.time()))

    async def provider_release(self, hold_id: str) -> dict[str, Any]:
        """The call was never made: drop the hold. False: closed already."""
        return ok(self.plimits.release(hold_id, time.time()))

    async def provider_used_up(self, models: list[str]) -> dict[str, Any]:
        """Which of `models` cannot take a request now ({model: refusal}); for `auto`'s candidates."""
        if any(self.plimits.limited(m) for m in models):
            await self._load_provider_usage()
        return ok({m: r.to_dict() for m, r in self.plimits.used_up(models, time.time()).items()})

    async def provider_remaining(self) -> dict[str, Any]:
        """What is left per limited model and limit in the current windows, and the calls in
        flight per model (/metrics)."""
        if self.plimits.limits:
            await self._load_provider_usage()
        return ok({"windows": self.plimits.remaining(time.time()), "in_flight": self.plimits.in_flight()})
