"""The router deployment's pieces without a cluster: engine, reloader, request options, key lookup.

The deployment class itself runs here as a plain object on an asyncio loop (Serve's `serve.batch`
works outside a replica), with real artifacts in a real local registry.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from app.config import parse_config
from app.errors import OpenAIError
from app.request.options import routing_options
from deployments.router import RouterDeployment, merge_user_config
from router.engine import LearnedEngine
from router.reloader import ArtifactSlot, Target, router_signing_key
from router.runtime import LearnedRouter
from tests.conftest import gateway_test_config
from tests.router_deployment_support import CHAT, CODE, GPT35, KEY, learned_config, publish, train_artifact

CANDIDATES = ["mock-mixtral", "mock-gpt-3.5", "mock-gpt-4"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("router-unit")
    reg = root / "registry"
    version = publish(reg, train_artifact(root / "a1"))
    return reg, version


def _cfg(tmp_path: Path, registry: Path, **router) -> dict:
    return learned_config(1, 2, tmp_path, registry, **router)


def test_engine_maps_labels_and_decides_by_prompt(registry, tmp_path):
    reg, version = registry
    cfg = parse_config(_cfg(tmp_path, reg))
    engine = LearnedEngine(LearnedRouter.load(str(reg), "latest", KEY), cfg)
    assert engine.version == version
    assert sorted(engine.models) == sorted(CANDIDATES)  # parallel mock-claude-sandbox is never a candidate
    P = engine.predict(["Write a python function that sorts strings", "Hi there! Lovely weather today."]).quality
    assert engine.decide(P[0], 0.0, CANDIDATES).model == "mock-gpt-4"
    assert engine.decide(P[1], 0.0, CANDIDATES).model == "mock-mixtral"
    # restricted candidates and unknown ones
    assert engine.decide(P[0], 0.0, ["mock-gpt-3.5", "mock-mixtral"]).model in {"mock-gpt-3.5", "mock-mixtral"}
    assert engine.decide(P[0], 0.0, ["mock-claude-sandbox"]) is None
    # artifact costs are used when the artifact has them for every candidate
    costs, source = engine.costs_for(CANDIDATES)
    assert source == "artifact" and costs.argmax() == CANDIDATES.index("mock-gpt-4")
    # a huge cost weight turns the code prompt towards a cheaper model
    assert engine.decide(P[0], 50.0, CANDIDATES).model != "mock-gpt-4"


def test_routing_options_validate_header_and_body():
    assert routing_options(None, None, CANDIDATES) == (None, CANDIDATES)
    assert routing_options("0.25", None, CANDIDATES) == (0.25, CANDIDATES)
    assert routing_options(None, {"cost_weight": 2, "candidates": ["mock-gpt-4"]}, CANDIDATES) == (2.0, ["mock-gpt-4"])
    assert routing_options("0.1", {"cost_weight": 3}, CANDIDATES)[0] == 0.1  # the header wins
    for header, ext, param in [
        ("abc", None, "x-doka-cost-weight"), ("-1", None, "x-doka-cost-weight"), ("nan", None, "x-doka-cost-weight"),
        (None, {"cost_weight": "x"}, "doka.cost_weight"), (None, {"cost_weight": True}, "doka.cost_weight"),
        (None, {"candidates": ["nope"]}, "doka.candidates"), (None, {"candidates": []}, "doka.candidates"),
        (None, {"candidates": ["mock-claude-sandbox"]}, "doka.candidates"),
        (None, {"temperature": 1}, "doka"), (None, [1], "doka"),
    ]:
        with pytest.raises(OpenAIError) as e:
            routing_options(header, ext, CANDIDATES)
        assert e.value.status == 400 and e.value.param == param
        assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_signing_key_lookup_order(tmp_path, monkeypatch):
    monkeypatch.delenv("DOKA_SIGNING_KEY", raising=False)
    monkeypatch.delenv("DOKA_SIGNING_KEY_FILE", raising=False)
    raw = gateway_test_config(1, 2)
    raw["server"]["data_dir"] = str(tmp_path)
    cfg = parse_config(raw)  # signing_key defaults to os.environ/DOKA_SIGNING_KEY
    assert router_signing_key(cfg) is None  # no env, no key file: every artifact is refused
    (tmp_path / "signing.key").write_text("dev-key\n")
    assert router_signing_key(cfg) == b"dev-key"  # the local dev key in the data dir
    monkeypatch.setenv("DOKA_SIGNING_KEY", "prod-key")
    assert router_signing_key(cfg) == b"prod-key"


def test_merge_user_config_only_takes_router_settings(tmp_path):
    raw = _cfg(tmp_path, tmp_path / "r")
    cfg = merge_user_config(raw, {"artifact": "v9", "strategy": "learned", "poll_interval_s": 5, "server": {"port": 1}})
    assert cfg.router.artifact == "v9" and cfg.router.poll_interval_s == 5 and cfg.server.port == 2


def test_slot_keeps_serving_the_old_engine_until_the_new_one_is_ready():
    release = threading.Event()

    def load(target: Target) -> str:
        if target.artifact == "slow":
            release.wait(10)
        if target.artifact == "bad":
            raise ValueError("corrupt")
        return target.artifact

    async def scenario() -> None:
        slot: ArtifactSlot[str] = ArtifactSlot(load, lambda e: e, lambda t: None)
        assert await slot.request(Target("r", "v1")) and slot.current == "v1"
        task = slot.request(Target("r", "slow"))
        await asyncio.sleep(0.05)
        assert slot.current == "v1" and slot.status()["loading"]  # old one still serving
        release.set()
        assert await task and slot.current == "slow" and slot.state == "ready"
        # a superseded load never swaps in: the older one finishes (loads run one at a time) but
        # the newer request, made while it was loading, is what ends up serving
        release.clear()
        older = slot.request(Target("r", "slow"))
        newer = slot.request(Target("r", "v3"))
        asyncio.get_running_loop().call_later(0.2, release.set)
        assert await newer and slot.current == "v3"
        assert not await older and slot.current == "v3"
        # a failed load degrades to the fallback (current None) with the reason, and recovers
        assert not await slot.request(Target("r", "bad"))
        assert slot.current is None and slot.state == "degraded" and "corrupt" in slot.reason
        assert await slot.request(Target("r", "v4")) and slot.state == "ready"

    asyncio.run(scenario())


class ServedRouter:
    """The Router deployment alone in a real Serve app; `call(method, *args)` goes through its handle."""

    def __init__(self, raw: dict, name: str) -> None:
        from ray import serve

        self.name = name
        self.handle = serve.run(RouterDeployment.options(name="Router", num_replicas=1, user_config=None,
                                                         ray_actor_options={"num_cpus": 0.1}).bind(raw),
                                name=name, route_prefix=None)
        # this test calls the handle from plain (sync) code; with RAY_SERVE_THROUGHPUT_OPTIMIZED
        # handles default to routing on the caller's event loop, which sync code does not have
        if not self.handle.is_initialized:
            self.handle._init(_run_router_in_separate_loop=True)

    def call(self, method: str, *args):
        return getattr(self.handle, method).remote(*args).result(timeout_s=60)

    def routes(self, prompts: list[str], cost_weight=None, candidates=None) -> list[dict]:
        responses = [self.handle.route.remote(p, cost_weight, candidates) for p in prompts]  # concurrent
        return [r.result(timeout_s=60) for r in responses]

    def wait(self, predicate, timeout: float = 60) -> dict:
        import time

        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.call("status")
            if predicate(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"router status never matched: {st}")

    def close(self) -> None:
        from ray import serve

        serve.delete(self.name)


@pytest.fixture()
def served(ray_cluster):
    routers: list[ServedRouter] = []

    def make(raw: dict, name: str) -> ServedRouter:
        routers.append(ServedRouter(raw, name))
        return routers[-1]

    yield make
    for r in routers:
        r.close()


def test_deployment_batches_degrades_on_corrupt_artifact_and_recovers_by_poll(registry, tmp_path, served):
    import shutil

    reg_src, version = registry
    reg = tmp_path / "registry"
    shutil.copytree(reg_src, reg)
    router = served(_cfg(tmp_path, reg, poll_interval_s=0.2), "router-unit-corrupt")
    router.call("reconfigure", {"strategy": "learned", "registry": str(reg), "artifact": "latest"})
    st = router.call("status")
    assert st["serving"] == "learned" and st["artifact_version"] == version and not st["degraded"]
    # concurrent requests are batched through one embed + score call and each gets its own choice
    out = router.routes(CODE[:4] + CHAT[:4], 0.0)
    assert [d.model for d in out] == ["mock-gpt-4"] * 4 + ["mock-mixtral"] * 4
    assert all(d.strategy == "learned" and d.artifact_version == version and not d.degraded for d in out)

    model_file = reg / "versions" / version / "model.skops"
    good = model_file.read_bytes()
    model_file.write_bytes(good[:-10] + b"corrupted!")
    router.call("reconfigure", {"strategy": "learned", "registry": str(reg), "artifact": version})
    st = router.wait(lambda s: s["state"] == "degraded")
    assert st["degraded"] and "modified after signing" in st["reason"]
    d = router.call("route", CODE[0], None, None)
    assert d.degraded and d.strategy == "weighted_round_robin" and d.artifact_version is None

    model_file.write_bytes(good)  # restored: the poll retries a degraded pinned version
    router.wait(lambda s: not s["degraded"])
    d = router.call("route", CODE[0], 0.0, None)
    assert d.strategy == "learned" and d.artifact_version == version and d.model == "mock-gpt-4"


def test_deployment_poll_notices_a_newer_latest(registry, tmp_path, served):
    import shutil

    reg_src, version = registry
    reg = tmp_path / "registry"
    shutil.copytree(reg_src, reg)
    router = served(_cfg(tmp_path, reg, poll_interval_s=0.2), "router-unit-poll")
    assert router.call("route", CODE[0], 0.0, None).model == "mock-gpt-4"  # no user_config: loads on first use
    newer = publish(reg, train_artifact(tmp_path / "a2", code_label=GPT35))
    router.wait(lambda s: s["artifact_version"] == newer)
    d = router.call("route", CODE[0], 0.0, None)
    assert d.artifact_version == newer and d.model == "mock-gpt-3.5"


def test_deployment_without_artifact_is_degraded_not_crashed(tmp_path, served):
    empty = tmp_path / "empty-registry"
    router = served(_cfg(tmp_path, empty), "router-unit-empty")
    router.call("reconfigure", {"strategy": "learned", "registry": str(empty), "artifact": "latest"})
    st = router.call("status")
    assert st["degraded"] and "no `latest`" in st["reason"]
    d = router.call("route", "hello", None, ["mock-gpt-4", "mock-mixtral"])
    assert d.model in {"mock-gpt-4", "mock-mixtral"} and d.degraded
    # a static strategy needs no artifact and is not degraded
    router.call("reconfigure", {"strategy": "cheapest_healthy"})
    st = router.call("status")
    assert not st["degraded"] and st["serving"] == "cheapest_healthy"
    assert router.call("route", "hello").model == "mock-mixtral"
