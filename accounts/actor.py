"""The one shared accounts actor per cluster and database: named, async, optionally detached.

Every ingress replica gets the same actor by name, so counters are shared exactly; the name
includes a digest of the database URL so gateways on different databases never mix.
"""

from __future__ import annotations

import hashlib
from typing import Any

from accounts.keys import hash_key

NAMESPACE = "doka"


def database_url(cfg: Any) -> str:
    from accounts.db import default_url

    return cfg.accounts.database_url or default_url(cfg.data_path())


def master_key(cfg: Any) -> str | None:
    from app.config import ConfigError, resolve_secret

    try:
        value = resolve_secret(cfg.accounts.master_key)
    except ConfigError:
        return None
    return value or None


def core_kwargs(cfg: Any) -> dict[str, Any]:
    mk = master_key(cfg)
    # the ledger's price table (app/pricing.py's rule; an unpriced model is charged 0 USD, its
    # cost column stays comparable: the observer marks it unpriced)
    prices = {m.model_name: ((p.input, p.output) if (p := m.price) is not None else (0.0, 0.0))
              for m in cfg.model_list}
    return {
        "database_url": database_url(cfg),
        "master_key_hash": hash_key(mk) if mk else None,
        "prices": prices,
        "require_keys": cfg.accounts.require_keys,
        "settle_interval_s": cfg.accounts.settle_interval_s,
        "owner_lease_s": cfg.accounts.reservation_lease_s,
        "spool_dir": spool_dir(cfg),
        "provider_limits": {m.model_name: m.model_info.limits.model_dump() for m in cfg.model_list
                            if m.model_info.limits is not None},
    }


def spool_dir(cfg: Any) -> str | None:
    """Where the ledger's write-ahead spool lives (accounts.spool), one per database; None: off."""
    if not cfg.accounts.ledger_spool:
        return None
    if cfg.accounts.spool_dir:
        return cfg.accounts.spool_dir
    digest = hashlib.sha256(database_url(cfg).encode()).hexdigest()[:12]
    return str(cfg.data_path() / "ledger-spool" / digest)


def actor_name(url: str) -> str:
    return "doka-accounts-" + hashlib.sha256(url.encode()).hexdigest()[:12]


def get_or_create_actor(cfg: Any, *, detached: bool = True):
    """The cluster's accounts actor for this config's database, started if missing."""
    import ray

    from accounts.core import AccountsCore

    kwargs = core_kwargs(cfg)
    options: dict[str, Any] = {
        "name": actor_name(kwargs["database_url"]),
        "namespace": NAMESPACE,
        "get_if_exists": True,
        "num_cpus": 0,
        "max_concurrency": 10_000,
        "max_restarts": -1,
        "max_task_retries": 0,
    }
    if detached:
        options["lifetime"] = "detached"
    return ray.remote(AccountsCore).options(**options).remote(**kwargs)
