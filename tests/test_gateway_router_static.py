"""Static routing strategies and the router logic behind the router deployment."""

from __future__ import annotations

from collections import Counter

import pytest

from app.config import parse_config
from deployments.router import StaticRouter
from app.pricing import Price, price_of, rank_price
from router.decision import RouteDecision
from router.static import CheapestHealthy, WeightedRoundRobin
from tests.conftest import gateway_test_config


def test_weighted_round_robin_follows_weights_smoothly():
    wrr = WeightedRoundRobin({"a": 2, "b": 1})
    picks = [wrr.choose(["a", "b"]).model for _ in range(6)]
    assert Counter(picks) == {"a": 4, "b": 2}
    assert picks == ["a", "b", "a", "a", "b", "a"]  # interleaved, not a-a-b bursts


def test_weighted_round_robin_respects_candidates_and_zero_weight():
    wrr = WeightedRoundRobin({"a": 1, "b": 1, "c": 0})
    assert {wrr.choose(["b", "c"]).model for _ in range(4)} == {"b"}
    with pytest.raises(ValueError):
        wrr.choose([])


def test_cheapest_healthy_skips_models_in_cooldown():
    ch = CheapestHealthy({"cheap": 1e-6, "mid": 5e-6, "dear": 1e-5}, cooldown_s=60)
    assert ch.choose(["dear", "mid", "cheap"]).model == "cheap"
    ch.mark_failed("cheap")
    assert ch.choose(["dear", "mid", "cheap"]).model == "mid"
    ch.mark_failed("mid")
    ch.mark_failed("dear")
    choice = ch.choose(["dear", "mid", "cheap"])
    assert choice.model == "cheap" and "cooling down" in choice.reason  # all down: cheapest anyway
    ch.mark_ok("mid")
    assert ch.choose(["dear", "mid", "cheap"]).model == "mid"


def test_cooldown_expires():
    ch = CheapestHealthy({"a": 1.0, "b": 2.0}, cooldown_s=10)
    ch.mark_failed("a", now=100.0)
    assert not ch.healthy("a", now=105.0) and ch.healthy("a", now=111.0)


def test_price_of_unpriced_models():
    assert rank_price(price_of(None, None, self_hosted=True)) == 0.0
    assert rank_price(price_of(None, None, self_hosted=False)) == float("inf")
    assert rank_price(price_of(1e-6, 2e-6, self_hosted=False)) == pytest.approx(3e-6)
    assert price_of(1e-6, None, self_hosted=True) == Price(1e-6, 0.0)


def _router(strategy: str) -> StaticRouter:
    raw = gateway_test_config(1, 2)
    raw["router"]["strategy"] = strategy
    return StaticRouter(parse_config(raw))


def test_router_contract_and_candidates():
    r = _router("weighted_round_robin")
    d = r.route("hello", None, None)
    assert isinstance(d, RouteDecision) and d.artifact_version is None and d.reason.startswith("weighted_round_robin")
    assert d.strategy == "weighted_round_robin"
    # parallel models are never auto candidates; config models only
    seen = {r.route("x", None, None).model for _ in range(12)}
    assert seen == {"mock-mixtral", "mock-gpt-3.5", "mock-gpt-4"}
    assert r.route("x", None, ["mock-gpt-4", "mock-claude-sandbox"]).model == "mock-gpt-4"


def test_router_cheapest_healthy_uses_config_prices_and_reports():
    r = _router("cheapest_healthy")
    assert r.route("x").model == "mock-mixtral"  # 1.2e-6/token is the cheapest in default.yaml
    r.report("mock-mixtral", ok=False)
    assert r.route("x").model == "mock-gpt-3.5"


def test_learned_strategy_without_artifact_falls_back_and_says_so():
    r = _router("learned")
    d = r.route("x")
    assert d.strategy == "weighted_round_robin" and d.reason.startswith("fallback:")
