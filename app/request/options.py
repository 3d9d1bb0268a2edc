"""The client's routing options: how much to weigh cost, and which `auto` candidates to consider.

A client narrows what the router considers, never widens it: candidates must already be `auto`
candidates (the key's allow-list narrows them further in app/request/plan.py).
"""

from __future__ import annotations

import math
from typing import Any

from app.errors import bad_request


def routing_options(header_weight: str | None, ext: Any, allowed: list[str]) -> tuple[float | None, list[str]]:
    """Per-request routing options: cost weight and candidate restriction.

    Cost weight: header `x-doka-cost-weight`, else body `{"doka": {"cost_weight": w}}`; a
    number >= 0 (None = the router's default). Candidates: `{"doka": {"candidates": [...]}}`,
    a subset of the `auto` candidates. Anything else is a 400 naming the bad field.
    """
    weight: Any = header_weight
    param = "x-doka-cost-weight"
    candidates = list(allowed)
    if ext is not None:
        if not isinstance(ext, dict):
            raise bad_request("'doka' must be an object like {\"cost_weight\": 0.2, \"candidates\": [...]}",
                              param="doka")
        unknown = sorted(set(ext) - {"cost_weight", "candidates"})
        if unknown:
            raise bad_request(f"Unknown field(s) in 'doka': {unknown}; known: cost_weight, candidates", param="doka")
        if weight is None and ext.get("cost_weight") is not None:
            weight, param = ext["cost_weight"], "doka.cost_weight"
        if ext.get("candidates") is not None:
            wanted = ext["candidates"]
            if not isinstance(wanted, list) or not wanted or not all(isinstance(c, str) for c in wanted):
                raise bad_request("'doka.candidates' must be a non-empty list of model names", param="doka.candidates")
            bad = [c for c in wanted if c not in allowed]
            if bad:
                raise bad_request(f"'doka.candidates' names models that are not auto candidates: {bad}; "
                                  f"choose from {allowed}", param="doka.candidates", code="invalid_candidates")
            candidates = list(dict.fromkeys(wanted))
    if weight is None:
        return None, candidates
    try:
        if isinstance(weight, bool):
            raise ValueError
        value = float(weight)
    except (TypeError, ValueError):
        raise bad_request(f"{param} must be a number >= 0", param=param, code="invalid_cost_weight") from None
    if not math.isfinite(value) or value < 0:
        raise bad_request(f"{param} must be a finite number >= 0, got {weight!r}", param=param,
                          code="invalid_cost_weight")
    return value, candidates
