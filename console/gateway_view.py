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


def models(ing: Any, allowance: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per configured model: provider, tier, price, chain, auto candidacy, cooldown, a
    tier left out at start (`down`), a local tier's queue (`load`, deployments/tier_load.py) and
    provider limits with what is left of them (`limits`; `allowance`: `provider_allowance`'s)."""
    cfg = ing.cfg
    backends = getattr(ing, "_backends", {})
    down = getattr(ing, "_down", {})
    loads = getattr(ing, "_loads", None)
    load_rows = loads.snapshot() if loads is not None else {}
    windows: dict[str, dict[str, dict[str, Any]]] = {}
    for w in (allowance or {}).get("windows", []):
        windows.setdefault(w["model"], {})[w["limit"]] = w
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
            "down": down.get(m.model_name),
            "queue_limit": info.queue_limit,
            "load": load_rows.get(m.model_name),
            "limits": _limits(info, windows.get(m.model_name, {}),
                              (allowance or {}).get("in_flight", {}).get(m.model_name, 0)),
        })
    return rows


def _limits(info: Any, windows: dict[str, dict[str, Any]], in_flight: int) -> list[dict[str, Any]]:
    """Per configured provider limit: its size, what is left now and when it resets (None: the
    accounts core did not answer)."""
    if info.limits is None:
        return []
    out = []
    for name in ("rpm", "tpm", "rpd", "tpd"):
        size = getattr(info.limits, name)
        if size is None:
            continue
        w = windows.get(name)
        out.append({"limit": name, "of": size, "remaining": None if w is None else w["remaining"],
                    "reset_s": None if w is None else w["reset_s"], "in_flight": in_flight})
    return out


async def provider_allowance(ing: Any) -> dict[str, Any] | None:
    """The accounts core's provider-limit counts now (None: no limited model, or no answer)."""
    gate = getattr(ing, "_plimits", None)
    if gate is None:
        return None
    return await gate.remaining()


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def load_text(row: dict[str, Any]) -> str:
    """A local tier's queue for the Models page: `waiting 3 · running 8 · limit 2 · full`."""
    load, limit = row.get("load"), row.get("queue_limit")
    if load is None:
        return "" if limit is None else f"limit {limit} · not read yet"
    parts = [f"waiting {load['waiting']}", f"running {load['running']}"]
    if limit is not None:
        parts.append(f"limit {limit}")
    if load.get("full"):
        parts.append("full: skipped")
    return " · ".join(parts)


def limits_text(row: dict[str, Any]) -> str:
    """Provider limits for the Models page: `rpd 2 of 3 left, resets in 5.0 h`."""
    out = []
    for lim in row.get("limits") or []:
        if lim["remaining"] is None:
            out.append(f"{lim['limit']} {lim['of']:,} (count unavailable)")
        else:
            out.append(f"{lim['limit']} {lim['remaining']:,} of {lim['of']:,} left, "
                       f"resets in {_duration(lim['reset_s'])}")
    return "; ".join(out)


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
