"""Helpers for the router deployment tests: tiny trained artifacts and a declaratively deployed app.

The app is deployed the way a RayService deploys it (a Serve config with
`import_path: app.graph:app_builder`, applied through the Serve controller), so changing the
Router's `user_config` is an in-place `reconfigure`, exactly as in production.
"""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

from tests.conftest import gateway_test_config

KEY = "router-deployment-test-key"
CODE = [f"Write a python function that {t}" for t in (
    "sorts a list of integers", "parses a CSV file", "reverses a linked list", "computes fibonacci numbers",
    "merges two dictionaries", "validates an email address", "reads a JSON file", "counts words in a string",
    "implements binary search", "flattens a nested list")]
CHAT = [f"Hi there! {t}" for t in (
    "How are you doing today?", "What a lovely sunny morning.", "Did you have a nice weekend?",
    "I just got back from vacation.", "Tell me something cheerful.", "Hope your day is going well.",
    "Thanks for chatting with me.", "Good evening, friend.", "What's your favourite colour?", "Nice to meet you!")]
# held-out probes: the same two kinds of request, none of them in the training data above
CODE_PROBES = [f"Write a python function that {t}" for t in (
    "checks whether a number is prime", "converts celsius to fahrenheit", "downloads a web page",
    "removes duplicates from a list")]
CHAT_PROBES = [f"Hi there! {t}" for t in (
    "Hope you slept well.", "Lovely to hear from you again.", "How was your trip to the coast?",
    "It is raining here today.")]
# labels of config/default.yaml's mock models (model_info.route_label)
MIXTRAL, GPT35, GPT4 = "mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "gpt-4-1106-preview"
LABEL_OF = {"mock-mixtral": MIXTRAL, "mock-gpt-3.5": GPT35, "mock-gpt-4": GPT4}


def train_artifact(out: Path, code_label: str = GPT4, chat_label: str = MIXTRAL, key: str = KEY,
                   extra: list[tuple[str, dict[str, float]]] | None = None, family: str = "knn") -> Path:
    """A tiny signed router (knn unless `family` says otherwise): `code_label` is the good model
    for code, `chat_label` for small talk."""
    from training.dataset import Record, from_records
    from training.train import train

    labels = (MIXTRAL, GPT35, GPT4)
    costs = {MIXTRAL: 0.0006, GPT35: 0.0015, GPT4: 0.02}
    recs = []
    for kind, prompts, good in (("code", CODE, code_label), ("chat", CHAT, chat_label)):
        for i, p in enumerate(prompts):
            recs.append(Record(id=f"{kind}{i}", prompt=p, costs=costs,
                               scores={lab: 1.0 if lab == good else 0.1 for lab in labels}))
    for i, (p, scores) in enumerate(extra or []):
        recs.append(Record(id=f"extra{i}", prompt=p, scores=scores, costs=costs))
    if out.exists():
        shutil.rmtree(out)
    params = {"n_neighbors": 3} if family == "knn" else {}
    return train(from_records(recs), family, out, params=params, holdout=0, signing_key=key, progress=False)


def publish(registry: Path, artifact: Path, key: str = KEY) -> str:
    from router.registry import Registry

    # versions carry a seconds timestamp (taken when trained): into the next whole second, so
    # whatever is trained after this publish sorts after it (was a flat 1.1 s)
    time.sleep(1.02 - time.time() % 1)
    return Registry(str(registry)).publish(artifact, key=key)


def learned_config(mock_port: int, server_port: int, data_dir: Path, registry: Path, **router: Any) -> dict[str, Any]:
    raw = gateway_test_config(mock_port, server_port)
    raw["server"].update(data_dir=str(data_dir), app_name=router.pop("app_name", "doka-learned"),
                         route_prefix=router.pop("route_prefix", "/learned"))
    raw["router"].update({"strategy": "learned", "registry": str(registry), "artifact": "latest",
                          "signing_key": KEY, "poll_interval_s": 0, **router})
    return raw


def deploy(raw: dict[str, Any], router_user_config: dict[str, Any] | None = None) -> None:
    """Deploy (or update) the app declaratively, optionally with a different router user_config."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from app.config import parse_config
    from app.serve_config import router_owner, serve_config

    cfg = parse_config(raw)
    sc = serve_config(cfg)
    app = sc["applications"][0]
    for d in app["deployments"]:  # Router, or Ingress when the router runs there (router.placement)
        if d["name"] == router_owner(cfg) and router_user_config is not None:
            d["user_config"] = {**d["user_config"], **router_user_config}
    # keep any other declarative app (e.g. another test module's) deployed alongside this one
    client = _get_global_client()
    others = [a["deployed_app_config"] for name, a in (client.get_serve_details().get("applications") or {}).items()
              if name != app["name"] and a.get("source") == "declarative" and a.get("deployed_app_config")]
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [*others, app]}))


def wait_running(app_name: str, timeout: float = 240) -> None:
    from ray import serve

    deadline = time.time() + timeout
    status = None
    while time.time() < deadline:
        status = serve.status().applications.get(app_name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"{app_name} failed to deploy: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"{app_name} not running after {timeout}s: {status}")


def wait_for(predicate, timeout: float = 60, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except httpx.HTTPError as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s (last: {last!r})")


def chat(url: str, prompt: str, model: str = "auto", headers: dict[str, str] | None = None,
         doka: dict[str, Any] | None = None, timeout: float = 30) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
    if doka is not None:
        body["doka"] = doka
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers or {}, timeout=timeout)


class LearnedApp:
    """A learned-router app deployed declaratively: its URL, config, registry and first version."""

    def __init__(self, url: str, raw: dict[str, Any], registry: Path, work: Path, v1: str) -> None:
        self.url, self.raw, self.registry, self.work, self.v1 = url, raw, registry, work, v1

    def readiness(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health/readiness", timeout=10)

    def router(self) -> dict[str, Any]:
        """The readiness answer as a dict, with its HTTP status under `http`."""
        r = self.readiness()
        return {"http": r.status_code, **r.json()}

    def reconfigure(self, **user_config: Any) -> None:
        """Apply a Router user_config in place (Serve `reconfigure`, as KubeRay would)."""
        deploy(self.raw, {"strategy": "learned", "registry": str(self.registry), **user_config})


@contextmanager
def learned_app(mock_port: int, port: int, work: Path, app_name: str, route_prefix: str) -> Iterator[LearnedApp]:
    """Train and publish v1, deploy the app on `port`, wait until v1 serves; delete it after."""
    from ray import serve

    registry = work / "registry"
    v1 = publish(registry, train_artifact(work / "a1"))
    raw = learned_config(mock_port, port, work / "data", registry, app_name=app_name, route_prefix=route_prefix)
    deploy(raw)
    wait_running(app_name)
    app = LearnedApp(f"http://127.0.0.1:{port}{route_prefix}", raw, registry, work, v1)
    wait_for(lambda: app.readiness().json().get("router", {}).get("artifact_version") == v1, 120, what="v1 loaded")
    try:
        yield app
    finally:
        serve.delete(app_name)
