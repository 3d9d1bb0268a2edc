"""`router.placement`: the router inside each ingress replica (default) or as its own deployment.

The Serve config, the KubeRay reload patch and the live reload must all find the deployment that
holds the router user_config; in the ingress, decisions asked for in one event-loop iteration are
scored in one call on the loop. The in-process path end to end (auto answers, in-place reload
through the ingress's `reconfigure`) is tests/test_router_deployment_gateway.py, which deploys
the default placement; the Router deployment placement is killed and drained in
tests/test_faults_replicas.py and rendered from config/gpu.example.yaml in tests/test_kuberay_render.py.
"""

from __future__ import annotations

import asyncio

import pytest

from app.config import load_config, parse_config
from app.serve_config import router_owner, router_user_config, serve_config
from deployments.router import InProcessRouter, RouterService
from kuberay.client import with_router_user_config
from tests.conftest import REPO
from tests.router_deployment_support import CHAT, CODE, KEY, learned_config, publish, train_artifact


def _deployments(cfg) -> dict[str, dict]:
    return {d["name"]: d for d in serve_config(cfg)["applications"][0]["deployments"]}


@pytest.mark.parametrize("placement, owner, absent", [("ingress", "Ingress", "Router"), ("deployment", "Router", None)])
def test_serve_config_puts_the_router_user_config_where_the_router_runs(placement, owner, absent):
    raw = load_config(REPO / "config" / "default.yaml").model_dump(mode="json", exclude_unset=True)
    raw["router"]["placement"] = placement
    cfg = parse_config(raw)
    deps = _deployments(cfg)
    assert router_owner(cfg) == owner
    assert deps[owner]["user_config"] == router_user_config(cfg) == {
        "strategy": "learned", "artifact": "latest", "registry": ".doka/registry"}
    holders = [name for name, d in deps.items() if "user_config" in d]
    assert holders == [owner]  # exactly one deployment takes router settings
    if absent:
        assert absent not in deps  # `serve deploy` would refuse options for a deployment the graph lacks


def test_default_config_decides_in_the_ingress_and_the_gpu_example_in_a_router_deployment():
    assert load_config(REPO / "config" / "default.yaml").router.placement == "ingress"
    assert load_config(REPO / "config" / "gpu.example.yaml").router.placement == "deployment"


@pytest.mark.parametrize("config, owner", [("default.yaml", "Ingress"), ("gpu.example.yaml", "Router")])
def test_kuberay_reload_patches_the_deployment_that_holds_the_router(config, owner):
    cfg = load_config(REPO / "config" / config)
    sc = serve_config(cfg)
    new, user_config = with_router_user_config(sc, artifact="v9", registry=None)
    deps = {d["name"]: d for d in new["applications"][0]["deployments"]}
    assert deps[owner]["user_config"] == {**router_user_config(cfg), "artifact": "v9"} == user_config
    assert [n for n, d in deps.items() if "user_config" in d] == [owner]
    assert sc != new and "v9" not in str(sc)  # the input is left alone


def test_in_process_router_scores_one_event_loop_iteration_in_one_call(tmp_path):
    reg = tmp_path / "registry"
    publish(reg, train_artifact(tmp_path / "a1"))
    router = InProcessRouter(learned_config(1, 2, tmp_path, reg))
    assert isinstance(router.service, RouterService)

    async def scenario() -> tuple[list[dict], list[int]]:
        await router.reconfigure({"strategy": "learned", "registry": str(reg), "artifact": "latest"})
        engine = router.service._slot.current
        assert engine is not None and engine.inline  # static featurizer: scored on the loop
        sizes: list[int] = []
        predict = engine.predict

        def counting(prompts):  # the real predict, with the batch sizes recorded
            sizes.append(len(prompts))
            return predict(prompts)

        engine.predict = counting
        prompts = CODE[:5] + CHAT[:5]
        decisions = await asyncio.gather(*(router.route.remote(p, 0.0, None) for p in prompts))
        one = await router.route.remote(CODE[5], 0.0, None)
        status = await router.status.remote()
        assert status["serving"] == "learned" and not status["degraded"]
        return [*decisions, one], sizes

    decisions, sizes = asyncio.run(scenario())
    assert sizes == [10, 1]  # ten concurrent decisions shared one predict call, a lone one ran alone
    assert all(d.strategy == "learned" and not d.degraded for d in decisions)
    assert {d.model for d in decisions[:5]} == {"mock-gpt-4"} and {d.model for d in decisions[5:10]} == {"mock-mixtral"}


def test_a_gated_artifacts_decisions_say_which_path_the_prompt_took(tmp_path):
    reg = tmp_path / "registry"
    publish(reg, train_artifact(tmp_path / "gated", family="gated"))
    router = InProcessRouter(learned_config(1, 2, tmp_path, reg))

    async def scenario() -> list[dict]:
        await router.reconfigure({"strategy": "learned", "registry": str(reg), "artifact": "latest"})
        novel = "Zur Mitteilung: der Vorstand tagt am Donnerstag im Saal 4, Tagesordnung folgt per Post."
        return [await router.route.remote(p, 0.0, None) for p in (CODE[0], CHAT[0], novel)]

    code, chat, novel = asyncio.run(scenario())
    assert all(d.strategy == "learned" for d in (code, chat, novel))
    assert (code.familiar, chat.familiar, novel.familiar) == (True, True, False)
    assert code.model == "mock-gpt-4" and chat.model == "mock-mixtral"


def test_other_families_decisions_carry_no_gate(tmp_path):
    reg = tmp_path / "registry"
    publish(reg, train_artifact(tmp_path / "knn"))
    router = InProcessRouter(learned_config(1, 2, tmp_path, reg))

    async def scenario() -> dict:
        await router.reconfigure({"strategy": "learned", "registry": str(reg), "artifact": "latest"})
        return await router.route.remote(CODE[0], 0.0, None)

    decision = asyncio.run(scenario())
    assert decision.strategy == "learned" and decision.familiar is None
