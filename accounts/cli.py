"""`doka keys generate|list|info|update|delete|usage`: the admin API over HTTP with the master key."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def _limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alias", dest="key_alias")
    p.add_argument("--team")
    p.add_argument("--user")
    p.add_argument("--models", help="comma-separated allowed models (default: all)")
    p.add_argument("--tokens-per-day", type=int)
    p.add_argument("--tokens-per-month", type=int)
    p.add_argument("--max-budget", type=float, help="USD")
    p.add_argument("--budget-period", choices=["day", "week", "month"], help="budget reset period (default: lifetime)")
    p.add_argument("--rpm", dest="rpm_limit", type=int, help="requests per minute")
    p.add_argument("--tpm", dest="tpm_limit", type=int, help="tokens per minute")
    p.add_argument("--duration", help="expiry from now, e.g. 30d, 12h")
    p.add_argument("--metadata", help="JSON object")


def _limit_values(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("key_alias", "team", "user", "tokens_per_day", "tokens_per_month", "max_budget", "budget_period",
                 "rpm_limit", "tpm_limit", "duration"):
        v = getattr(args, name, None)
        if v is not None:
            out[name] = v
    if getattr(args, "models", None) is not None:
        out["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if getattr(args, "metadata", None):
        out["metadata"] = json.loads(args.metadata)
    return out


def _request(args: argparse.Namespace, method: str, path: str, *, params: dict | None = None,
             body: dict | None = None) -> int:
    import httpx

    key = args.master_key or os.environ.get("DOKA_MASTER_KEY")
    if not key:
        print("error: no master key: pass --master-key or set DOKA_MASTER_KEY", file=sys.stderr)
        return 2
    try:
        r = httpx.request(method, args.url.rstrip("/") + path, params={k: v for k, v in (params or {}).items()
                          if v is not None}, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    except httpx.HTTPError as e:
        print(f"error: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    try:
        data = r.json()
    except ValueError:
        data = {"error": {"message": r.text, "type": "http_error", "code": r.status_code}}
    print(json.dumps(data, indent=2))
    if r.status_code >= 400:
        msg = data.get("error", {}).get("message") if isinstance(data, dict) else None
        print(f"error: HTTP {r.status_code}: {msg}", file=sys.stderr)
        return 1
    return 0


def _generate(args):
    return _request(args, "POST", "/key/generate", body=_limit_values(args))


def _list(args):
    return _request(args, "GET", "/key/list", params={"team": args.team, "user": args.user,
                                                       "include_revoked": str(args.include_revoked).lower()})


def _info(args):
    return _request(args, "GET", "/key/info", params=_ident(args))


def _update(args):
    return _request(args, "POST", "/key/update", body={**_ident(args), **_limit_values(args)})


def _delete(args):
    body = {"keys": [k for k in args.keys if k.startswith("sk-")], "key_ids": [k for k in args.keys
                                                                              if not k.startswith("sk-")]}
    return _request(args, "POST", "/key/delete", body=body)


def _usage(args):
    return _request(args, "GET", "/usage", params={"group_by": args.group_by, "key_id": args.key_id,
                                                   "model": args.model, "start": args.start, "end": args.end})


def _ident(args) -> dict[str, str]:
    return {"key": args.key} if args.key.startswith("sk-") else {"key_id": args.key}


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="manage virtual keys, quotas and budgets (admin API)")
    keys.set_defaults(handler=lambda a: (keys.print_help(), 2)[1])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("DOKA_URL", DEFAULT_URL), help="gateway base URL")
    common.add_argument("--master-key", help="default: env DOKA_MASTER_KEY")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")

    p = sub.add_parser("generate", parents=[common], help="create a key (the plain key is printed once)")
    _limits(p)
    p.set_defaults(handler=_generate)

    p = sub.add_parser("list", parents=[common], help="list keys")
    p.add_argument("--team")
    p.add_argument("--user")
    p.add_argument("--include-revoked", action="store_true")
    p.set_defaults(handler=_list)

    p = sub.add_parser("info", parents=[common], help="settings and live usage of a key")
    p.add_argument("key", help="plain key (sk-doka-...) or key id")
    p.set_defaults(handler=_info)

    p = sub.add_parser("update", parents=[common], help="change limits of a key")
    p.add_argument("key", help="plain key (sk-doka-...) or key id")
    _limits(p)
    p.set_defaults(handler=_update)

    p = sub.add_parser("delete", parents=[common], help="revoke keys")
    p.add_argument("keys", nargs="+", help="plain keys or key ids")
    p.set_defaults(handler=_delete)

    p = sub.add_parser("usage", parents=[common], help="requests, tokens and cost grouped by key/model/day")
    p.add_argument("--group-by", default="key,model,day")
    p.add_argument("--key-id")
    p.add_argument("--model")
    p.add_argument("--start", help="first day, YYYY-MM-DD")
    p.add_argument("--end", help="last day, YYYY-MM-DD")
    p.set_defaults(handler=_usage)
