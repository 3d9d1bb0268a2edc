"""Load-aware tiers, the Ray-free core (deployments/tier_load.py): readings per replica, the
queue limit, the all-full rule, the background poller, and the replica's reading of vLLM's
scheduler stats (deployments/vllm.py `engine_load`, `QueueRecorder`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from deployments.tier_load import Load, LoadPoller, TierLoads, parse_reading


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_full_at_the_queue_limit_summed_over_replicas():
    clock = Clock()
    loads = TierLoads({"local": 4, "free": None}, clock=clock)
    assert loads.load("local") is None and not loads.full("local")  # unknown: not full
    loads.record("local", "r1", Load(2, 8))
    assert not loads.full("local")
    loads.record("local", "r2", Load(2, 8))
    assert loads.load("local") == Load(4, 16, "vllm")
    assert loads.full("local")
    loads.record("local", "r2", Load(1, 8))  # a newer reading replaces that replica's
    assert not loads.full("local")
    loads.record("free", "r1", Load(1000, 8))  # no queue_limit: never full
    assert not loads.full("free")


def test_a_replica_not_heard_from_stops_counting():
    clock = Clock()
    loads = TierLoads({"local": 2}, stale_after_s=5, clock=clock)
    loads.record("local", "gone", Load(5, 1))
    assert loads.full("local")
    clock.t += 6
    loads.record("local", "alive", Load(0, 1))
    assert loads.load("local") == Load(0, 1, "vllm")
    assert not loads.full("local")
    clock.t += 6
    assert loads.load("local") is None


def test_split_skips_full_tiers_unless_all_are_full():
    loads = TierLoads({"a": 1, "b": 1})
    loads.record("a", "r", Load(3, 1))
    assert loads.split(["a", "paid"]) == (["paid"], ["a"])
    assert loads.split(["paid", "a"]) == (["paid"], ["a"])
    loads.record("b", "r", Load(1, 1))
    assert loads.split(["a", "b"]) == (["a", "b"], [])  # nowhere else to go: queue
    snap = loads.snapshot()
    assert snap["a"] == {"waiting": 3, "running": 1, "source": "vllm", "queue_limit": 1, "full": True}


@pytest.mark.parametrize("raw", [None, [], {"waiting": -1, "running": 0}, {"waiting": 1.5, "running": 0},
                                 {"waiting": True, "running": 0}, {"running": 1}])
def test_bad_readings_are_refused(raw):
    with pytest.raises(ValueError):
        parse_reading(raw)


def test_poller_records_good_readings_and_survives_bad_ones():
    loads = TierLoads({"ok": 2, "slow": 2, "broken": 2, "junk": 2})

    async def ok():
        return {"waiting": 3, "running": 2, "replica": "r1", "source": "vllm"}

    async def slow():
        await asyncio.sleep(5)

    async def broken():
        raise RuntimeError("replica gone")

    async def junk():
        return "no"

    poller = LoadPoller({"ok": ok, "slow": slow, "broken": broken, "junk": junk}, loads, interval_s=0.01,
                        timeout_s=0.05)

    async def go():
        await poller.poll_once()
        assert loads.full("ok") and loads.load("slow") is None and loads.load("broken") is None
        poller.ensure_started()
        task = poller._task
        assert task is not None
        await asyncio.sleep(0.2)
        assert not task.done()  # the loop keeps going past failing sources
        await poller.stop()
        assert task.done()

    asyncio.run(go())


def test_ensure_started_without_a_loop_is_a_no_op():
    poller = LoadPoller({"x": lambda: None}, TierLoads({}))  # type: ignore[dict-item]
    poller.ensure_started()
    assert poller._task is None


# ------------------------------------------------------------------ the replica's reading of vLLM
@dataclass
class _Stats:  # the fields of vllm.v1.metrics.stats.SchedulerStats that are read
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    num_skipped_waiting_reqs: int = 0


@dataclass
class _Manager:
    stat_loggers: list = field(default_factory=list)

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        for lg in self.stat_loggers:
            lg.record(scheduler_stats, iteration_stats, mm_cache_stats=mm_cache_stats, engine_idx=engine_idx)


def _client(unfinished: int, manager: _Manager | None, max_num_seqs: int = 4) -> SimpleNamespace:
    return SimpleNamespace(
        logger_manager=manager,
        output_processor=SimpleNamespace(get_num_unfinished_requests=lambda: unfinished),
        vllm_config=SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs)))


def test_scheduler_stats_become_the_reading():
    from deployments.vllm import QueueRecorder, _queue_recorder, engine_load

    manager = _Manager()
    client = _client(9, manager)
    rec = _queue_recorder(client)
    assert isinstance(rec, QueueRecorder) and _queue_recorder(client) is rec  # added once
    assert manager.stat_loggers == [rec]
    assert engine_load(client, rec)["source"] == "frontend"  # no engine step seen yet
    manager.record(_Stats(num_running_reqs=4, num_waiting_reqs=4, num_skipped_waiting_reqs=1), None, engine_idx=0)
    assert engine_load(client, rec) == {"waiting": 5, "running": 4, "source": "vllm"}
    manager.record(_Stats(num_running_reqs=2, num_waiting_reqs=0), None, engine_idx=1)  # data parallel
    assert engine_load(client, rec) == {"waiting": 5, "running": 6, "source": "vllm"}
    assert engine_load(_client(0, manager), rec) == {"waiting": 0, "running": 0, "source": "vllm"}  # idle


def test_without_stats_the_frontend_count_is_split_at_max_num_seqs():
    from deployments.vllm import _queue_recorder, engine_load

    client = _client(7, None, max_num_seqs=4)
    assert _queue_recorder(client) is None
    assert engine_load(client, None) == {"waiting": 3, "running": 4, "source": "frontend"}
    assert engine_load(None, None)["waiting"] == 0  # engine still starting


def test_queue_limit_is_for_vllm_tiers_only():
    from app.config import ConfigError, parse_config
    from tests.conftest import gateway_test_config

    raw = gateway_test_config(9100, 0)
    raw["model_list"][0]["model_info"]["queue_limit"] = 3
    with pytest.raises(ConfigError, match="queue_limit needs `provider: vllm`"):
        parse_config(raw)


# ------------------------------------------------------------------ the console's Models page rows
def test_models_page_rows_carry_load_limits_and_down_tiers():
    from app.config import parse_config
    from console import gateway_view
    from tests.conftest import gateway_test_config

    raw = gateway_test_config(9100, 0)
    raw["model_list"].insert(0, {"model_name": "local-q", "provider": "vllm", "vllm": {"model_source": "/nowhere"},
                                 "model_info": {"tier": "local", "queue_limit": 2}})
    raw["model_list"].insert(0, {"model_name": "local-off", "provider": "vllm", "vllm": {"model_source": "/nowhere"},
                                 "model_info": {"tier": "local"}})
    raw["model_list"][2]["model_info"]["limits"] = {"rpd": 3, "tpm": 1000}
    raw["accounts"] = {"require_keys": True, "master_key": "sk-test-master"}
    cfg = parse_config(raw)
    limited = raw["model_list"][2]["model_name"]
    loads = TierLoads({"local-q": 2})
    loads.record("local-q", "r1", Load(4, 8))
    ing = SimpleNamespace(cfg=cfg, _backends={"local-q": object()}, _loads=loads, _egress=None,
                          _down={"local-off": "weights not found at /nowhere"})
    allowance = {"windows": [{"model": limited, "limit": "rpd", "remaining": 2, "reset_s": 18000.0},
                             {"model": limited, "limit": "tpm", "remaining": 1000, "reset_s": 30.0}],
                 "in_flight": {limited: 1}}
    rows = {r["model"]: r for r in gateway_view.models(ing, allowance)}
    assert rows["local-off"]["down"] == "weights not found at /nowhere"
    assert rows["local-q"]["load"] == {"waiting": 4, "running": 8, "source": "vllm", "queue_limit": 2, "full": True}
    assert gateway_view.load_text(rows["local-q"]) == "waiting 4 · running 8 · limit 2 · full: skipped"
    assert gateway_view.load_text(rows["local-off"]) == ""
    assert [x["limit"] for x in rows[limited]["limits"]] == ["tpm", "rpd"]
    assert gateway_view.limits_text(rows[limited]) == ("tpm 1,000 of 1,000 left, resets in 30 s; "
                                                       "rpd 2 of 3 left, resets in 5.0 h")
    no_core = {r["model"]: r for r in gateway_view.models(ing, None)}
    assert gateway_view.limits_text(no_core[limited]) == "tpm 1,000 (count unavailable); rpd 3 (count unavailable)"
