"""Admin endpoints (keys, usage, spend logs), all behind the master key.

Bodies are validated here and every failure is answered in OpenAI's error shape, so the router
behaves the same whatever exception handlers the app that includes it has.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from accounts.client import Accounts, api_key_from_headers
from accounts.errors import AccountsError, bad_request, unauthorized
from accounts.keys import DeleteKeyRequest, GenerateKeyRequest, UpdateKeyRequest

GROUPS = ("key", "model", "day")


def _check_master(request: Request, master_key: str | None) -> None:
    if not master_key:
        raise unauthorized("admin API disabled: no master key configured (set DOKA_MASTER_KEY)", "no_master_key")
    given = api_key_from_headers(request.headers)
    if not given or not hmac.compare_digest(given.encode(), master_key.encode()):
        raise unauthorized("admin endpoints need the master key", "invalid_master_key")


async def _body(request: Request, model: type[BaseModel]) -> Any:
    try:
        raw = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"body is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise bad_request("body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise bad_request(f"{loc}: {err['msg']}", param=loc or None) from e


def _int(request: Request, name: str, default: int, lo: int = 0, hi: int = 100_000) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError as e:
        raise bad_request(f"{name} must be an integer", param=name) from e
    if not lo <= v <= hi:
        raise bad_request(f"{name} must be between {lo} and {hi}", param=name)
    return v


class _Lazy:
    """Resolves the Accounts at request time (routes are declared before replicas exist)."""

    def __init__(self, get: Callable[[], Accounts]) -> None:
        self._get = get

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self._get().call(method, *args, **kwargs)


def make_router(
    accounts: Accounts | Callable[[], Accounts],
    master_key: str | None | Callable[[], str | None],
    prefix: str = "",
) -> APIRouter:
    """The admin APIRouter; include it in the ingress app (`app.include_router(...)`).

    `accounts` and `master_key` may be callables, resolved per request.
    """
    router = APIRouter(prefix=prefix, tags=["admin"])
    if callable(accounts) and not isinstance(accounts, Accounts):
        accounts = _Lazy(accounts)  # type: ignore[assignment]
    get_master = master_key if callable(master_key) else (lambda: master_key)

    def admin(fn: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                _check_master(request, get_master())
                return JSONResponse(await fn(request))
            except AccountsError as e:
                return e.to_response()

        endpoint.__name__ = fn.__name__
        endpoint.__doc__ = fn.__doc__
        return endpoint

    @admin
    async def generate_key(request: Request) -> Any:
        """Create a key; the plain key is in the answer once and never again."""
        body = await _body(request, GenerateKeyRequest)
        return await accounts.call("generate_key", body.model_dump(exclude_unset=True, mode="json"))

    @admin
    async def key_info(request: Request) -> Any:
        """A key's settings and live usage counters, by `key` or `key_id`."""
        q = request.query_params
        return await accounts.call("key_info", q.get("key"), q.get("key_id"))

    @admin
    async def list_keys(request: Request) -> Any:
        q = request.query_params
        include = q.get("include_revoked", "false").lower() in ("1", "true", "yes")
        keys = await accounts.call("list_keys", team=q.get("team"), user=q.get("user"), include_revoked=include,
                                   limit=_int(request, "limit", 100, 1, 1000), offset=_int(request, "offset", 0))
        return {"keys": keys}

    @admin
    async def update_key(request: Request) -> Any:
        body = await _body(request, UpdateKeyRequest)
        fields = body.model_dump(exclude_unset=True, mode="json", exclude={"key", "key_id"})
        return await accounts.call("update_key", body.key, body.key_id, fields)

    @admin
    async def delete_key(request: Request) -> Any:
        """Revoke keys; they stop working at once (the key cache is invalidated)."""
        body = await _body(request, DeleteKeyRequest)
        if not body.keys and not body.key_ids:
            raise bad_request("give `keys` or `key_ids`", param="keys")
        return await accounts.call("delete_key", body.keys, body.key_ids)

    def usage_endpoint(fixed: tuple[str, ...] | None):
        async def usage(request: Request) -> Any:
            q = request.query_params
            if fixed is None:
                group_by = [g for g in q.get("group_by", "key,model,day").split(",") if g]
                bad = [g for g in group_by if g not in GROUPS]
                if bad or not group_by:
                    raise bad_request(f"group_by takes a comma list of {', '.join(GROUPS)}", param="group_by")
            else:
                group_by = list(fixed)
            rows = await accounts.call("usage", group_by, key_id=q.get("key_id"), model=q.get("model"),
                                       start=q.get("start"), end=q.get("end"))
            return {"group_by": group_by, "data": rows}

        return admin(usage)

    @admin
    async def spend_logs(request: Request) -> Any:
        """Ledger rows, newest first (`limit=1` is the latest request), optionally for one key."""
        rows = await accounts.call("ledger", key_id=request.query_params.get("key_id"),
                                   limit=_int(request, "limit", 1000, 1, 100_000), newest_first=True)
        return {"data": rows}

    router.add_api_route("/key/generate", generate_key, methods=["POST"])
    router.add_api_route("/key/info", key_info, methods=["GET"])
    router.add_api_route("/key/list", list_keys, methods=["GET"])
    router.add_api_route("/key/update", update_key, methods=["POST"])
    router.add_api_route("/key/delete", delete_key, methods=["POST"])
    router.add_api_route("/usage", usage_endpoint(None), methods=["GET"])
    router.add_api_route("/usage/keys", usage_endpoint(("key",)), methods=["GET"])
    router.add_api_route("/usage/models", usage_endpoint(("model",)), methods=["GET"])
    router.add_api_route("/usage/days", usage_endpoint(("day",)), methods=["GET"])
    router.add_api_route("/spend/logs", spend_logs, methods=["GET"])
    return router
