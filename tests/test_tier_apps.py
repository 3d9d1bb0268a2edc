"""Each vLLM tier is its own Serve application (issue 31): names, the Serve config's layout, and
the ingress's cached view of those applications (deployments/tier_apps.py). Ray-free: the status
fetch is a plain function here; tests/test_vllm_isolation.py runs the real thing."""

from __future__ import annotations

import asyncio
import copy

import pytest
import yaml
from ray.serve.schema import ApplicationStatusOverview, DeploymentStatusOverview, ServeDeploySchema, ServeStatus

from app.config import ConfigError, parse_config
from app.graph import tier_app_builder
from app.serve_config import serve_config
from deployments.tier_apps import (AppState, TierWatch, app_name, deployment_name, reason_down, short_message,
                                   states_from_serve_status, tier_apps, tiers_starting)
from tests.conftest import DEFAULT_CONFIG

TRACEBACK = ("The deployment failed to start 3 times in a row. This may be due to a problem with its constructor.\n"
             "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
             "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)\n")


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_each_vllm_model_gets_its_own_app_and_deployment_name() -> None:
    cfg = parse_config(_raw())
    assert tier_apps(cfg) == {"local-tiny": {"app": "doka-tier-local-tiny", "deployment": "LLMServer:local-tiny"}}
    assert deployment_name("Qwen/Qwen2.5-7B") == "LLMServer:Qwen--Qwen2_5-7B"  # ray.serve.llm's own naming
    assert app_name(cfg, "a b/c") == "doka-tier-a-b-c"


def test_serve_config_has_the_gateway_first_then_one_unrouted_app_per_tier() -> None:
    raw = _raw()
    raw["model_list"].append({**copy.deepcopy(raw["model_list"][0]), "model_name": "local-two"})
    cfg = parse_config(raw)
    sc = serve_config(cfg)
    ServeDeploySchema.model_validate(sc)  # what `serve deploy` and KubeRay's serveConfigV2 accept
    gateway, *tiers = sc["applications"]
    assert gateway["name"] == "doka" and gateway["import_path"] == "app.graph:app_builder"
    assert [(t["name"], t["route_prefix"], t["import_path"]) for t in tiers] == [
        ("doka-tier-local-tiny", None, "app.graph:tier_app_builder"),
        ("doka-tier-local-two", None, "app.graph:tier_app_builder")]
    entry = tiers[0]["args"]["entry"]
    assert entry["model_name"] == "local-tiny" and entry["vllm"]["model_source"] == ".doka/models/tiny-llama"
    assert "model_info" not in entry  # a price or timeout change does not redeploy the engine
    # a new chain changes the gateway's args only: Serve leaves the tier applications (engines) running
    raw["fallbacks"]["another"] = ["mock-gpt-4", "mock-mixtral"]
    again = serve_config(parse_config(raw))
    assert again["applications"][1:] == tiers and again["applications"][0] != gateway
    by_path = serve_config(cfg, inline=False, config_path="/etc/doka.yaml")["applications"][1]
    assert by_path["args"] == {"config_path": "/etc/doka.yaml", "model": "local-tiny"}


def test_tier_builder_refuses_a_tier_that_cannot_start_with_the_reason(tmp_path) -> None:
    entry = {"model_name": "local-x", "provider": "vllm",
             "vllm": {"model_source": str(tmp_path / "none"), "placement_group_config": {"bundles": [{"CPU": 1}]}}}
    with pytest.raises(ConfigError, match="vLLM tier local-x cannot start: .*weights not found"):
        tier_app_builder({"entry": entry})
    with pytest.raises(ConfigError, match="args.entry"):
        tier_app_builder({"entry": {"model_name": "local-x", "provider": "vllm"}})
    with pytest.raises(ConfigError, match="not in the config"):
        tier_app_builder({"config": _raw(), "model": "nope"})


def test_reasons_name_the_app_and_serves_message() -> None:
    assert reason_down("a", AppState("RUNNING")) is None
    assert reason_down("a", AppState("DEPLOYING", running_replicas=1)) is None  # a rolling update serves
    assert reason_down("a", None) == "not deployed (Serve has no application a)"
    assert reason_down("a", AppState("DEPLOYING")) == "starting (Serve application a is DEPLOYING)"
    why = reason_down("a", AppState("DEPLOY_FAILED", TRACEBACK))
    assert why.startswith("Serve application a is DEPLOY_FAILED: The deployment failed to start 3 times")
    assert why.endswith("JSONDecodeError: Expecting value: line 1 column 1 (char 0)")
    assert short_message("x" * 1000).endswith("...") and len(short_message("x" * 1000)) == 400


def test_states_come_from_serve_status_objects() -> None:
    dep = DeploymentStatusOverview(status="DEPLOY_FAILED", status_trigger="REPLICA_STARTUP_FAILED",
                                   replica_states={}, message=TRACEBACK)
    ok = DeploymentStatusOverview(status="HEALTHY", status_trigger="CONFIG_UPDATE_COMPLETED",
                                  replica_states={"RUNNING": 2}, message="")
    status = ServeStatus(applications={
        "t": ApplicationStatusOverview(status="DEPLOY_FAILED", message="Deploying app 't' failed.",
                                       last_deployed_time_s=0.0, deployments={"LLMServer:t": dep}),
        "u": ApplicationStatusOverview(status="RUNNING", message="", last_deployed_time_s=0.0,
                                       deployments={"LLMServer:u": ok})})
    states = states_from_serve_status(status)
    assert states["u"] == AppState("RUNNING", "", 2)
    assert states["t"].status == "DEPLOY_FAILED" and states["t"].running_replicas == 0
    assert states["t"].message.startswith("Deploying app 't' failed.") and "JSONDecodeError" in states["t"].message


def test_a_tier_is_starting_until_it_serves_or_fails() -> None:
    tiers = {"a": "app-a", "b": "app-b", "c": "app-c", "d": "app-d"}
    states = {"app-a": AppState("DEPLOYING"), "app-b": AppState("RUNNING", "", 1),
              "app-c": AppState("DEPLOY_FAILED", "boom"), "app-d": AppState("DEPLOYING", "", 1)}  # d: a rolling update
    assert tiers_starting(tiers, states) == ["a"]
    assert tiers_starting(tiers, {}) == ["a", "b", "c", "d"]  # not deployed yet
    assert tiers_starting({}, states) == []


def _status(main: str, tier: str, tier_replicas: int = 0) -> ServeStatus:
    dep = DeploymentStatusOverview(status="HEALTHY" if tier_replicas else "UPDATING", status_trigger="CONFIG_UPDATE_STARTED",
                                   replica_states={"RUNNING": tier_replicas} if tier_replicas else {}, message="")
    return ServeStatus(applications={
        "doka": ApplicationStatusOverview(status=main, message="", last_deployed_time_s=0.0, deployments={}),
        "doka-tier-local-tiny": ApplicationStatusOverview(status=tier, message="engine failed" if tier == "DEPLOY_FAILED" else "",
                                                          last_deployed_time_s=0.0, deployments={"LLMServer:local-tiny": dep})})


@pytest.mark.parametrize("tier_end", ["RUNNING", "DEPLOY_FAILED"])
def test_doka_run_says_the_gateway_answers_while_a_tier_is_still_starting(monkeypatch, tier_end) -> None:
    """`doka run` waits for each vLLM tier to serve or fail before its ready line (a minute or more
    on CPU), but the gateway answers as soon as its own application runs: it says so once, then."""
    from ray import serve
    from ray.serve import context

    from app import run_cli

    script = [_status("DEPLOYING", "DEPLOYING"), _status("RUNNING", "DEPLOYING"), _status("RUNNING", "DEPLOYING"),
              _status("RUNNING", tier_end, 1 if tier_end == "RUNNING" else 0)]
    deployed: list = []
    monkeypatch.setattr(context, "_get_global_client", lambda: type("C", (), {"deploy_apps": lambda self, s: deployed.append(s)})())
    monkeypatch.setattr(serve, "status", lambda: script.pop(0) if len(script) > 1 else script[0])
    monkeypatch.setattr(run_cli.time, "sleep", lambda s: None)
    told: list[list[str]] = []
    lines = run_cli.deploy_declaratively(parse_config(_raw()), announce=told.append)
    assert len(deployed) == 1 and [a.name for a in deployed[0].applications] == ["doka", "doka-tier-local-tiny"]
    assert told == [["local-tiny"]]  # once, while the tier was starting
    if tier_end == "RUNNING":
        assert lines == []
    else:
        assert len(lines) == 1 and "local-tiny is not serving" in lines[0] and "DEPLOY_FAILED" in lines[0]


async def _spin() -> None:
    """Let the event loop run what is ready (a background refresh and its fetch)."""
    for _ in range(10):
        await asyncio.sleep(0)


class _Cluster:
    """A scripted Serve: `apps` is what the next fetch sees; counts fetches."""

    def __init__(self, apps: dict[str, AppState]) -> None:
        self.apps, self.fetches, self.fail = apps, 0, False
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> dict[str, AppState]:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("controller gone")
        return dict(self.apps)


def test_watch_skips_a_failed_tier_and_takes_it_back_once_redeployed() -> None:
    async def main() -> None:
        now = [0.0]
        serve = _Cluster({"app-a": AppState("DEPLOY_FAILED", "bad config.json"), "app-b": AppState("RUNNING")})
        watch = TierWatch({"a": "app-a", "b": "app-b"}, serve.fetch, interval_s=2.0, clock=lambda: now[0])
        assert "a" in watch and "x" not in watch
        assert await watch.check("x") is None and serve.fetches == 0  # not a tier application: no fetch
        assert await watch.check("a") == "Serve application app-a is DEPLOY_FAILED: bad config.json"
        assert await watch.check("b") is None and serve.fetches == 1  # one fetch answers both
        serve.apps["app-a"] = AppState("RUNNING")  # redeployed healthy
        assert await watch.check("a") is not None and serve.fetches == 1  # fresh view: not asked again yet
        now[0] = 2.5
        assert await watch.check("a") is None and serve.fetches == 2  # a down tier waits for the refresh
        assert watch.down == {}

    asyncio.run(main())


def test_watch_refreshes_a_serving_tier_in_the_background_and_keeps_the_view_on_errors() -> None:
    async def main() -> None:
        now = [0.0]
        serve = _Cluster({"app-a": AppState("RUNNING")})
        watch = TierWatch({"a": "app-a"}, serve.fetch, interval_s=1.0, clock=lambda: now[0])
        assert await watch.check("a") is None
        serve.apps["app-a"] = AppState("UNHEALTHY", "engine died")  # crashed later
        serve.gate = asyncio.Event()
        now[0] = 5.0
        assert await watch.check("a") is None  # stale but serving: answered now, refresh behind it
        await _spin()
        assert serve.fetches == 2
        assert await watch.check("a") is None  # single flight: the running fetch is not repeated
        await _spin()
        assert serve.fetches == 2
        serve.gate.set()
        await _spin()
        assert await watch.check("a") == "Serve application app-a is UNHEALTHY: engine died"
        serve.fail, serve.gate = True, None
        now[0] = 10.0
        assert await watch.refresh() == {"a": "Serve application app-a is UNHEALTHY: engine died"}
        assert watch.last_error == "ConnectionError: controller gone"

    asyncio.run(main())


def test_watch_with_no_tiers_never_asks_serve() -> None:
    async def main() -> None:
        serve = _Cluster({})
        watch = TierWatch({}, serve.fetch)
        assert await watch.refresh() == {} and serve.fetches == 0

    asyncio.run(main())


def test_concurrent_checks_of_an_unknown_view_share_one_fetch() -> None:
    async def main() -> None:
        serve = _Cluster({"app-a": AppState("DEPLOYING")})
        serve.gate = asyncio.Event()
        watch = TierWatch({"a": "app-a"}, serve.fetch)
        assert watch.down == {"a": "status not checked yet"}
        checks = [asyncio.ensure_future(watch.check("a")) for _ in range(5)]
        await _spin()
        serve.gate.set()
        assert set(await asyncio.gather(*checks)) == {"starting (Serve application app-a is DEPLOYING)"}
        assert serve.fetches == 1

    asyncio.run(main())


def test_a_controller_that_does_not_answer_keeps_the_last_view_within_the_timeout() -> None:
    async def main() -> None:
        now = [0.0]
        serve = _Cluster({"app-a": AppState("DEPLOY_FAILED", "bad")})
        watch = TierWatch({"a": "app-a"}, serve.fetch, interval_s=1.0, clock=lambda: now[0], fetch_timeout_s=0.05)
        assert await watch.check("a") == "Serve application app-a is DEPLOY_FAILED: bad"
        serve.gate = asyncio.Event()  # never set: the controller hangs
        now[0] = 2.0
        assert await asyncio.wait_for(watch.check("a"), 1) == "Serve application app-a is DEPLOY_FAILED: bad"
        assert watch.last_error.startswith("TimeoutError")

    asyncio.run(main())


def test_the_gateway_application_has_no_llm_server_and_each_tier_app_is_one(tmp_path) -> None:
    from ray.serve._private.build_app import build_app as serve_build

    from app.graph import build_app, build_apps
    from tests.conftest import gateway_test_config

    raw = gateway_test_config(9, 0)
    model_dir = tmp_path / "weights"
    model_dir.mkdir()  # present: tier_check passes (whether vLLM loads it is the engine's business)
    raw["model_list"].insert(0, {**_raw()["model_list"][0], "vllm": {
        **_raw()["model_list"][0]["vllm"], "model_source": str(model_dir)}})
    cfg = parse_config(raw)
    gateway = {d.name for d in serve_build(build_app(cfg), name="doka").deployments}
    assert "Ingress" in gateway and not any(n.startswith("LLMServer") for n in gateway)
    apps = build_apps(cfg)
    assert list(apps) == ["doka", "doka-tier-local-tiny"]
    tier = {d.name for d in serve_build(apps["doka-tier-local-tiny"], name="doka-tier-local-tiny").deployments}
    assert tier == {"LLMServer:local-tiny"}
    raw["model_list"][0]["vllm"]["model_source"] = str(tmp_path / "missing")
    assert list(build_apps(parse_config(raw))) == ["doka"]  # known not to start: no application
