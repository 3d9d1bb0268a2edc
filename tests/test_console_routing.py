"""The console's Routing page: registry versions side by side, promote and roll back through the
same Serve `reconfigure` path `doka router reload` takes (issue 34). A keyed, learned-router app
deployed declaratively (as `doka run` and a RayService deploy it) in the session's cluster."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from app.config import parse_config
from console import router_versions
from tests.conftest import serve_http_port
from tests.router_deployment_support import (deploy, learned_config, publish, train_artifact, wait_for,
                                             wait_running)

MASTER = "sk-doka-console-routing-master"
APP, PREFIX = "doka-console-routing", "/cr"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Path, str, str]:
    work = tmp_path_factory.mktemp("console-routing")
    reg = work / "registry"
    v1 = publish(reg, train_artifact(work / "a1"))
    v2 = publish(reg, train_artifact(work / "a2", family="logreg"))
    return reg, v1, v2


# ------------------------------------------------------------------ Ray-free: the registry view
def test_versions_side_by_side_and_the_rollback_target(registry):
    reg, v1, v2 = registry
    rows = router_versions.versions(str(reg), live=v2)
    assert [r["version"] for r in rows] == [v2, v1]  # newest first
    assert rows[0]["live"] and rows[0]["latest"] and not rows[1]["live"]
    assert (rows[0]["family"], rows[1]["family"]) == ("logreg", "knn")
    assert rows[1]["training_rows"] == 20 and rows[0]["featurizer"]
    assert router_versions.rollback_target(str(reg), v2) == v1
    assert router_versions.rollback_target(str(reg), v1) is None  # nothing older
    assert router_versions.rollback_target(str(reg), None) is None


def test_only_small_metadata_files_are_read_for_display(registry):
    from router.registry import Registry, RegistryError

    reg, v1, _ = registry
    assert b'"family"' in Registry(str(reg)).read_file(v1, "metadata.json", 1 << 20)
    with pytest.raises(RegistryError):
        Registry(str(reg)).read_file(v1, "model.skops", 1 << 30)  # not a display file
    with pytest.raises(RegistryError):
        Registry(str(reg)).read_file("../../etc", "metadata.json", 1 << 20)
    with pytest.raises(RegistryError, match="bytes"):
        Registry(str(reg)).read_file(v1, "metadata.json", 10)


def test_promote_refuses_bad_versions_and_apps_it_cannot_repin(registry, mock_upstream, tmp_path):
    reg, v1, _ = registry
    cfg = parse_config(learned_config(mock_upstream.port, 8000, tmp_path, reg))
    for bad, status in (("../x", 400), ("latest", 400), ("20200101-000000-knn-00000000", 400)):
        with pytest.raises(router_versions.PromoteRefused) as err:
            router_versions.promote(cfg, bad)
        assert err.value.status == status, (bad, err.value)
    no_registry = cfg.model_copy(update={"router": cfg.router.model_copy(update={"registry": None})})
    with pytest.raises(router_versions.PromoteRefused) as err:
        router_versions.promote(no_registry, v1)
    assert err.value.status == 409


# ------------------------------------------------------------------ through the gateway
@pytest.fixture(scope="module")
def app(ray_cluster, mock_upstream, registry, tmp_path_factory):
    from ray import serve

    reg, v1, v2 = registry
    port = serve_http_port()
    raw = learned_config(mock_upstream.port, port, tmp_path_factory.mktemp("cr-data"), reg,
                         app_name=APP, route_prefix=PREFIX)
    raw["accounts"] = {"require_keys": True, "master_key": MASTER, "settle_interval_s": 0.2}
    deploy(raw)
    wait_running(APP)
    url = f"http://127.0.0.1:{port}{PREFIX}"
    wait_for(lambda: _live(url) == v2, 120, what="latest (v2) loaded")
    yield url
    serve.delete(APP)


def _live(url: str) -> str | None:
    r = httpx.get(f"{url}/health/readiness", timeout=10)
    if "json" not in r.headers.get("content-type", ""):  # the proxy before the route exists
        return None
    return (r.json().get("router") or {}).get("artifact_version")


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


@contextmanager
def _client(url: str, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url + "/console", timeout=60) as c:
        assert c.post("/login", data={"key": key}).status_code == 303
        yield c


def test_roll_back_then_promote_through_reconfigure(app, registry):
    reg, v1, v2 = registry
    with _client(app, MASTER) as c:
        page = c.get("/routing")
        assert page.status_code == 200
        assert v1 in page.text and v2 in page.text and "logreg" in page.text
        assert f"Roll back to {v1}" in page.text and f'id="promote-{v1}"' in page.text
        assert f'id="promote-{v2}"' not in page.text  # the live one has no promote button
        csrf = _csrf(page.text)
        assert c.post("/routing/promote", data={"version": v1}).status_code == 403  # no CSRF token
        assert _live(app) == v2
        bad = c.post("/routing/promote", data={"version": "../../x", "csrf": csrf})
        assert bad.status_code == 400 and "not a valid version name" in bad.text
        back = c.post("/routing/promote", data={"version": v1, "csrf": csrf})
        assert back.status_code == 200 and f"pinned to {v1}" in back.text, back.text[-2000:]
        wait_for(lambda: _live(app) == v1, 120, what="v1 serving after the roll-back")
        ready = wait_for(lambda: (r := httpx.get(f"{app}/health/readiness", timeout=10)).status_code == 200 and r,
                         60, what="readiness after the roll-back")
        assert ready.json()["status"] == "ok"
        page = c.get("/routing")
        assert f'id="promote-{v2}"' in page.text and "Roll back to" not in page.text  # v1 is the oldest
        fwd = c.post("/routing/promote", data={"version": v2, "csrf": csrf})
        assert fwd.status_code == 200, fwd.text[-2000:]
        wait_for(lambda: _live(app) == v2, 120, what="v2 serving after the promote")
        # answers keep coming from the router after both swaps
        r = httpx.post(f"{app}/v1/chat/completions", headers={"Authorization": f"Bearer {MASTER}"}, timeout=30,
                       json={"model": "auto", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.headers["x-doka-route-reason"].startswith("auto:"), r.text


def test_a_plain_key_cannot_promote(app, registry):
    _, v1, _ = registry
    r = httpx.post(f"{app}/key/generate", headers={"Authorization": f"Bearer {MASTER}"}, json={}, timeout=30)
    assert r.status_code == 200, r.text
    with _client(app, r.json()["key"]) as c:
        csrf = _csrf(c.get("/me").text)
        refused = c.post("/routing/promote", data={"version": v1, "csrf": csrf})
        assert refused.status_code == 403
