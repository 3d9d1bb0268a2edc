"""The accounts core's admin API: keys (generate, info, list, update, revoke), usage, the ledger,
stats and the console's read queries. A mixin of `AccountsCore`: refusals come back as
`{"error"}` dicts like every other call."""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from accounts import db
from accounts.errors import AccountsError, bad_request, err, not_found, ok
from accounts.keys import KeyLimits, hash_key, key_hint, new_key, new_key_id, public_key_info
from accounts.meter import to_naive_utc


class KeyAdmin:
    """Admin calls (see the module docstring); state lives on `AccountsCore`."""

    async def _find(self, key: str | None, key_id: str | None) -> dict[str, Any]:
        if key:
            row = await self._db(db.get_key, key_hash=hash_key(key))
        elif key_id:
            row = await self._db(db.get_key, key_id=key_id)
        else:
            raise AccountsError(400, "give `key` or `key_id`", type="invalid_request_error", code="invalid_request")
        if row is None:
            raise not_found("no such key", "key" if key else "key_id")
        return row

    async def _admin(self, coro) -> dict[str, Any]:
        try:
            return ok(await coro)
        except AccountsError as e:
            return err(e)

    @staticmethod
    def _columns(fields: dict[str, Any], *, only_set: bool) -> dict[str, Any]:
        """API field names (KeyLimits) -> validated column values."""
        try:
            return KeyLimits.model_validate(fields).column_values(only_set=only_set)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise bad_request(f"{loc}: {err['msg']}", param=loc or None) from e

    async def generate_key(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Create a key from KeyLimits fields; the answer holds the plain key, once."""

        async def run():
            values = self._columns(fields, only_set=False)
            plain = new_key()
            row = await self._db(db.insert_key, {**values, "id": new_key_id(), "key_hash": hash_key(plain),
                                                "key_hint": key_hint(plain)})
            return {"key": plain, **public_key_info(row)}

        return await self._admin(run())

    async def key_info(self, key: str | None = None, key_id: str | None = None) -> dict[str, Any]:
        async def run():
            row = await self._find(key, key_id)
            meter = self._meters.get(row["id"]) or await self._build_meter(row)
            return {**public_key_info(row), "usage": meter.snapshot(time.time())}

        return await self._admin(run())

    async def list_keys(self, **filters: Any) -> dict[str, Any]:
        async def run():
            return [public_key_info(r) for r in await self._db(db.list_keys, **filters)]

        return await self._admin(run())

    async def update_key(self, key: str | None, key_id: str | None, fields: dict[str, Any]) -> dict[str, Any]:
        """Change the KeyLimits fields given; cached copies are dropped so it applies at once."""

        async def run():
            values = self._columns(fields, only_set=True)
            old = await self._find(key, key_id)
            row = await self._db(db.update_key, old["id"], values)
            self._invalidate(old)
            if row["budget_period"] != old["budget_period"] and old["id"] in self._meters:
                await self._build_meter(row, keep=self._meters[old["id"]])
            return public_key_info(row)

        return await self._admin(run())

    async def delete_key(self, keys: list[str], key_ids: list[str]) -> dict[str, Any]:
        """Revoke (soft delete: the ledger keeps pointing at the key)."""

        async def run():
            rows = [await self._find(k, None) for k in keys] + [await self._find(None, i) for i in key_ids]
            for row in rows:
                await self._db(db.update_key, row["id"], {"revoked_at": to_naive_utc(time.time())})
                self._invalidate(row)
            return {"deleted_keys": [r["id"] for r in rows]}

        return await self._admin(run())

    async def usage(self, group_by: list[str], **filters: Any) -> dict[str, Any]:
        async def run():
            await self.flush()
            return await self._db(db.usage, group_by, **filters)

        return await self._admin(run())

    async def ledger(self, key_id: str | None = None, limit: int = 10_000, newest_first: bool = False) -> dict[str, Any]:
        async def run():
            await self.flush()
            rows = await self._db(db.ledger_rows, key_id=key_id, limit=limit, newest_first=newest_first)
            for r in rows:
                r["created_at"] = r["created_at"].isoformat()
            return rows

        return await self._admin(run())

    async def stats(self) -> dict[str, Any]:
        return ok({"buffered": len(self._buffer), "reservations": len(self._reservations),
                    "cached_keys": len(self._keys), "flush_failures": self.flush_failures,
                    "wire_batches": self._wire.batches if self._wire is not None else 0,
                    "rows_quarantined": self.rows_quarantined, "rows_dropped": self.rows_dropped,
                    "provider_holds": self.plimits.open_holds(),
                    "spool": str(self._spool.dir) if self._spool is not None else None})

    async def console_query(self, name: str, **kwargs: Any) -> dict[str, Any]:
        """A read query of the console (accounts.console_queries, by name), after a flush."""
        from accounts.console_queries import QUERIES

        async def run():
            fn = QUERIES.get(name)
            if fn is None:
                raise bad_request(f"unknown console query {name!r}")
            await self.flush()
            try:
                return await self._db(fn, **kwargs)
            except (TypeError, ValueError) as e:
                raise bad_request(str(e)) from e

        return await self._admin(run())
