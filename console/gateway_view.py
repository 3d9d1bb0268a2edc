"""What the console reads from the ingress replica it runs in: config, backends, cooldowns, router.

The console's routes are part of the ingress app, so the replica's own Ingress object (Serve's
replica context) already knows the models, chains and router; nothing is asked of other replicas.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


def ingress() -> Any | None:
    """This replica's Ingress object, or None outside a Serve replica."""
    try:
        from ray import serve

        return serve.get_replica_context().servable_object
    except Exception:  # not in a replica (library use, unit tests)
        return None


def models(ing: Any) -> list[dict[str, Any]]:
    """One row per configured model: provider, tier, price, chain, auto candidacy, cooldown."""
    cfg = ing.cfg
    backends = getattr(ing, "_backends", {})
    candidates = set(cfg.auto_candidates())
    egress = getattr(ing, "_egress", None)
    failures = getattr(egress, "_last_failure", {}) if egress is not None else {}
    cooldown_s = getattr(egress, "_cooldown_s", 0.0) if egress is not None else 0.0
    now = time.monotonic()
    rows = []
    for m in cfg.model_list:
        info = m.model_info
        last = failures.get(m.model_name)
        age = None if last is None else now - last
        rows.append({
            "model": m.model_name, "provider": m.provider, "tier": info.tier, "mode": info.mode,
            "served": m.model_name in backends, "auto_candidate": m.model_name in candidates,
            "timeout_s": info.timeout, "input_usd_per_mtok": (info.input_cost_per_token or 0) * 1e6,
            "output_usd_per_mtok": (info.output_cost_per_token or 0) * 1e6,
            "chain": cfg.chain_for(m.model_name),
            "last_failure_s_ago": age,
            "cooling_down": age is not None and cooldown_s > 0 and age < cooldown_s,
        })
    return rows


async def router_status(ing: Any) -> dict[str, Any]:
    """The router's own status (strategy, artifact slot), as /health/readiness shows it."""
    router = getattr(ing, "_router", None)
    if router is None:
        return {}
    try:
        return dict(await asyncio.wait_for(router.status.remote(), 5))
    except Exception as e:  # a router that cannot answer is shown as such, not a 500
        return {"error": f"{type(e).__name__}: {e}"}


def strongest(ing: Any) -> tuple[str, float, float] | None:
    """The priciest `auto` candidate (name, USD per prompt token, per completion token)."""
    best = None
    for name in ing.cfg.auto_candidates():
        m = ing.cfg.model(name)
        if m is None:
            continue
        i, o = m.model_info.input_cost_per_token or 0.0, m.model_info.output_cost_per_token or 0.0
        if best is None or i + o > best[1] + best[2]:
            best = (name, i, o)
    return best
