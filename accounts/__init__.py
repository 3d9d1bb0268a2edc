"""Virtual keys, token quotas, budgets, rate limits and the spend ledger.

The ingress seam::

    principal = await accounts.authorize(api_key, model, body, request_id)   # may raise AccountsError
    ...upstream call...
    await accounts.settle(principal, model=chosen, usage=resp["usage"], latency_ms=..., route_reason=...)

where `accounts = Accounts.from_config(cfg)`; `accounts.admin_api.make_router(accounts, master_key)`
adds the admin endpoints.
"""

from accounts.client import Accounts, Principal, api_key_from_headers
from accounts.errors import AccountsError
from accounts.estimate import StreamMeter

__all__ = ["Accounts", "AccountsError", "Principal", "StreamMeter", "api_key_from_headers"]
