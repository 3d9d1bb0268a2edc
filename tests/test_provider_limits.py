"""Provider limits without Ray: windows, admission, settlement, persistence, config (issue 33).

The clock is injected (`now`, epoch seconds), so a daily reset in a provider's own time zone is
tested at the instant it happens, not by waiting for it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from accounts.provider_limits import DAY, MINUTE, Hold, ProviderLimiter, Refusal, window_bounds
from app.config import ConfigError, parse_config

LA = ZoneInfo("America/Los_Angeles")


def at(zone: ZoneInfo, *args: int) -> float:
    return datetime(*args, tzinfo=zone).timestamp()


def test_day_window_is_the_providers_calendar_day_in_its_zone() -> None:
    # 23:30 in Los Angeles is 07:30 UTC the next day: still the LA day that began at LA midnight
    now = at(LA, 2026, 3, 3, 23, 30)
    start, end = window_bounds(DAY, now, LA)
    assert start == at(LA, 2026, 3, 3) and end == at(LA, 2026, 3, 4)
    # the day DST starts (2026-03-08 in the US) is 23 hours long
    start, end = window_bounds(DAY, at(LA, 2026, 3, 8, 12), LA)
    assert end - start == 23 * 3600
    start, end = window_bounds(MINUTE, 125.5, LA)
    assert (start, end) == (120.0, 180.0)


def test_daily_limit_resets_at_midnight_in_the_reset_timezone_not_utc() -> None:
    lim = ProviderLimiter({"groq": {"rpd": 2, "reset_timezone": "America/Los_Angeles"}})
    t = at(LA, 2026, 6, 1, 16, 0)  # 23:00 UTC: a UTC day would reset in an hour, LA's in 8
    for _ in range(2):
        hold = lim.admit("groq", 10, t)
        assert isinstance(hold, Hold)
        assert lim.settle(hold.id, 10, t)
    refused = lim.admit("groq", 10, t)
    assert isinstance(refused, Refusal) and refused.limit == "rpd" and refused.reason == "provider_limit_rpd"
    assert refused.retry_after == pytest.approx(8 * 3600)
    utc_midnight = at(ZoneInfo("UTC"), 2026, 6, 2, 0, 30)
    assert isinstance(lim.admit("groq", 10, utc_midnight), Refusal)  # UTC's new day is not the provider's
    la_midnight = at(LA, 2026, 6, 2, 0, 0)
    assert isinstance(lim.admit("groq", 10, la_midnight), Hold)


def test_holds_count_so_concurrent_admissions_never_pass_the_limit() -> None:
    lim = ProviderLimiter({"m": {"rpm": 3}})
    holds = [lim.admit("m", 1, 1000.0) for _ in range(5)]
    assert [isinstance(h, Hold) for h in holds] == [True, True, True, False, False]
    assert lim.release(holds[0].id, 1001.0)  # never sent: the allowance comes back
    assert isinstance(lim.admit("m", 1, 1001.0), Hold)
    assert isinstance(lim.admit("m", 1, 1062.0), Hold)  # next minute


def test_token_limit_is_admitted_on_the_estimate_and_settled_with_the_usage() -> None:
    lim = ProviderLimiter({"m": {"tpd": 1000}})
    first = lim.admit("m", 800, 0.0)
    assert isinstance(first, Hold)
    refused = lim.admit("m", 300, 0.0)  # 800 held + 300 > 1000
    assert isinstance(refused, Refusal) and refused.limit == "tpd"
    lim.settle(first.id, 100, 0.0)  # it used 100 of its 800
    assert isinstance(lim.admit("m", 300, 0.0), Hold)
    rows = {(r["limit"]): r["remaining"] for r in lim.remaining(0.0)}
    assert rows == {"tpd": 1000 - 100 - 300}


def test_a_hold_closes_exactly_once() -> None:
    lim = ProviderLimiter({"m": {"rpd": 5, "tpd": 100}})
    hold = lim.admit("m", 50, 0.0)
    assert lim.settle(hold.id, 20, 0.0) is True
    assert lim.settle(hold.id, 20, 0.0) is False
    assert lim.release(hold.id, 0.0) is False
    assert {r["limit"]: r["remaining"] for r in lim.remaining(0.0)} == {"rpd": 4, "tpd": 80}
    assert lim.open_holds() == 0


def test_a_hold_settled_after_its_window_ended_leaves_the_new_window_alone() -> None:
    lim = ProviderLimiter({"m": {"rpm": 1}})
    hold = lim.admit("m", 1, 59.0)
    lim.settle(hold.id, 1, 61.0)
    assert isinstance(lim.admit("m", 1, 61.0), Hold)


def test_orphaned_holds_of_a_lost_replica_are_counted_at_their_worst_case() -> None:
    lim = ProviderLimiter({"m": {"tpd": 100}})
    lim.admit("m", 40, 0.0, owner="dead")
    lim.admit("m", 10, 0.0, owner="alive")
    assert len(lim.orphaned({"dead"}, -1.0, 1.0)) == 1
    assert lim.open_holds() == 1 and lim.remaining(1.0)[0]["remaining"] == 50


def test_models_without_limits_are_not_counted() -> None:
    lim = ProviderLimiter({"m": {"rpd": 1}})
    assert lim.admit("other", 10, 0.0) is None
    assert lim.used_up(["other", "m"], 0.0) == {}
    lim.settle(lim.admit("m", 1, 0.0).id, 1, 0.0)
    assert set(lim.used_up(["other", "m"], 0.0)) == {"m"}


def test_counts_survive_an_accounts_core_restart_over_the_same_database(tmp_path) -> None:
    from accounts.core import AccountsCore

    url = f"sqlite:///{tmp_path / 'doka.db'}"
    limits = {"groq": {"rpd": 3, "tpd": 10_000, "reset_timezone": "America/Los_Angeles"}}

    async def first() -> None:
        core = AccountsCore(url, provider_limits=limits, settle_interval_s=60)
        for _ in range(2):
            hold = (await core.provider_admit("groq", 100, "replica-a"))["ok"]["hold"]
            await core.provider_settle(hold, 42)
        await core.close()

    async def second() -> tuple[list, dict, dict]:
        core = AccountsCore(url, provider_limits=limits, settle_interval_s=60)
        remaining = (await core.provider_remaining())["ok"]["windows"]
        ok = (await core.provider_admit("groq", 100))["ok"]
        refused = (await core.provider_admit("groq", 100))["ok"]
        await core.close()
        return remaining, ok, refused

    asyncio.run(first())
    remaining, ok, refused = asyncio.run(second())
    assert {r["limit"]: r["remaining"] for r in remaining} == {"rpd": 1, "tpd": 10_000 - 84}
    assert "hold" in ok
    assert refused["refused"]["limit"] == "rpd" and refused["refused"]["used"] == 3


def _raw(limits: dict, require_keys: bool = True) -> dict:
    return {"model_list": [{"model_name": "groq", "litellm_params": {"model": "openai/x"},
                            "model_info": {"limits": limits}}],
            "accounts": {"require_keys": require_keys, "master_key": "sk-x"}}


def test_config_takes_limits_and_refuses_bad_ones_clearly() -> None:
    cfg = parse_config(_raw({"rpd": 6000, "rpm": 30, "reset_timezone": "America/Los_Angeles"}))
    assert cfg.model("groq").model_info.limits.rpd == 6000
    with pytest.raises(ConfigError, match="unknown time zone"):
        parse_config(_raw({"rpd": 1, "reset_timezone": "Mars/Olympus"}))
    with pytest.raises(ConfigError, match="at least one of rpm, tpm, rpd, tpd"):
        parse_config(_raw({"reset_timezone": "UTC"}))
    with pytest.raises(ConfigError, match="rpd"):
        parse_config(_raw({"rpd": 0}))
    with pytest.raises(ConfigError, match="extra|rpw"):
        parse_config(_raw({"rpw": 10}))
    with pytest.raises(ConfigError, match="needs accounts.require_keys"):
        parse_config(_raw({"rpd": 10}, require_keys=False))


def test_holds_of_a_lost_ingress_replica_are_closed_by_the_core_sweep(tmp_path) -> None:
    import time

    from accounts.core import AccountsCore

    async def run() -> tuple[dict, list]:
        core = AccountsCore(f"sqlite:///{tmp_path / 'doka.db'}", provider_limits={"m": {"rpd": 10, "tpd": 500}},
                            settle_interval_s=60, owner_lease_s=1.0)
        await core.provider_admit("m", 120, "lost-replica")
        core._owners["lost-replica"] = time.monotonic() - 5  # silent past its lease
        core._sweep_reservations()
        stats = (await core.stats())["ok"]
        left = (await core.provider_remaining())["ok"]
        await core.close()
        return stats, left

    stats, left = asyncio.run(run())
    assert stats["provider_holds"] == 0
    assert {r["limit"]: r["remaining"] for r in left["windows"]} == {"rpd": 9, "tpd": 380}  # its worst case
    assert left["in_flight"] == {"m": 0}


def test_the_429_names_the_limits_and_retries_at_the_soonest_reset() -> None:
    from app.errors import provider_limit_exceeded

    e = provider_limit_exceeded([{"model": "a", "limit": "rpd", "retry_after": 3600.2, "used": 5, "allowed": 5},
                                 {"model": "b", "limit": "rpm", "retry_after": 12.5, "used": 30, "allowed": 30}], [])
    assert e.status == 429 and e.headers["retry-after"] == "13"
    body = e.body()["error"]
    assert (body["type"], body["code"]) == ("rate_limit_error", "provider_limit_exceeded")
    assert "a rpd 5/5" in body["message"] and "b rpm 30/30" in body["message"]


def test_a_request_bigger_than_a_token_limit_is_told_to_lower_max_tokens() -> None:
    from app.errors import provider_limit_exceeded

    lim = ProviderLimiter({"groq": {"tpm": 6000}})
    refused = lim.admit("groq", 8000, 0.0)
    assert isinstance(refused, Refusal) and refused.needed == 8000
    e = provider_limit_exceeded([refused.to_dict()], [])
    assert "may use up to 8000 tokens, more than groq's tpm of 6000: lower max_tokens" in e.message
