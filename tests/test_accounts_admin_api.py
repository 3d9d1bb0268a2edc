"""The admin API and the seam over real HTTP (uvicorn on 127.0.0.1) with the real shared Ray actor.

Two uvicorn servers stand for two ingress replicas; both reach the one named accounts actor.
"""

from __future__ import annotations

import asyncio
import json
import types

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from accounts import Accounts, AccountsError, api_key_from_headers
from accounts.actor import get_or_create_actor
from accounts.admin_api import make_router
from app.cli import main as doka
from app.config import parse_config
from tests.accounts_support import *  # noqa: F401,F403

MASTER = "sk-master-test"
USAGE = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}


def config(tmp_path, db: str | None = None):
    return parse_config({
        "server": {"data_dir": str(tmp_path)},
        "model_list": [
            {"model_name": "cheap", "litellm_params": {"model": "openai/x"},
             "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
            {"model_name": "premium", "litellm_params": {"model": "openai/y"}},
        ],
        "accounts": {"master_key": MASTER, "settle_interval_s": 0.2, "database_url": db},
    })


def harness(accounts: Accounts) -> FastAPI:
    """A minimal gateway: the admin router plus a chat endpoint that answers USAGE after 20 ms."""
    app = FastAPI()
    app.include_router(make_router(accounts, MASTER))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        try:
            principal = await accounts.authorize(api_key_from_headers(request.headers), body["model"], body)
        except AccountsError as e:
            return e.to_response()
        await asyncio.sleep(0.02)
        await accounts.settle(principal, model=body["model"], usage=USAGE, latency_ms=20.0, route_reason="explicit")
        return JSONResponse({"object": "chat.completion", "model": body["model"], "usage": USAGE, "choices": []})

    return app


@pytest.fixture
def replicas(ray_cluster, tmp_path):
    cfg = config(tmp_path)
    actor = get_or_create_actor(cfg, detached=False)
    replicas = [UvicornThread(harness(Accounts(actor))) for _ in range(2)]
    for r in replicas:
        r.__enter__()
    yield types.SimpleNamespace(urls=[r.url for r in replicas], url=replicas[0].url, actor=actor, cfg=cfg)
    for r in replicas:
        r.__exit__()
    import ray

    ray.kill(actor)


def admin(method: str, url: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, url + path, headers={"Authorization": f"Bearer {MASTER}"}, timeout=30, **kw)


def chat(url: str, key: str | None, model: str = "cheap") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})


def test_admin_endpoints_need_the_master_key(replicas):
    for method, path in [("POST", "/key/generate"), ("GET", "/key/list"), ("GET", "/usage/keys")]:
        r = httpx.request(method, replicas.url + path, json={} if method == "POST" else None)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_master_key"
        r = httpx.request(method, replicas.url + path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401


def test_bad_admin_input_is_a_400_in_openai_shape(replicas):
    r = admin("POST", replicas.url, "/key/generate", content=b"{not json")
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = admin("POST", replicas.url, "/key/generate", json={"rpm_limit": -3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rpm_limit"
    r = admin("POST", replicas.url, "/key/generate", json={"no_such_field": 1})
    assert r.status_code == 400
    r = admin("GET", replicas.url, "/key/info", params={"key_id": "nope"})
    assert r.status_code == 404
    r = admin("GET", replicas.url, "/usage", params={"group_by": "colour"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "group_by"


def test_key_lifecycle_and_auth_matrix_over_http(replicas):
    r = admin("POST", replicas.url, "/key/generate", json={"models": ["cheap"], "team": "ml", "user": "ana",
                                                           "metadata": {"cost_center": 7}})
    assert r.status_code == 200
    created = r.json()
    key = created["key"]
    assert key.startswith("sk-doka-") and created["team"] == "ml" and created["metadata"] == {"cost_center": 7}

    assert chat(replicas.url, None).status_code == 401  # missing
    assert chat(replicas.url, "sk-doka-nope").status_code == 401  # unknown
    assert chat(replicas.url, key, "premium").status_code == 403  # model not allowed
    ok = chat(replicas.url, key)
    assert ok.status_code == 200 and ok.json()["usage"] == USAGE

    info = admin("GET", replicas.url, "/key/info", params={"key": key}).json()
    assert info["usage"]["tokens_today"] == 20 and "key" not in info and "key_hash" not in info
    listed = admin("GET", replicas.url, "/key/list", params={"team": "ml"}).json()["keys"]
    assert [k["key_id"] for k in listed] == [created["key_id"]]

    r = admin("POST", replicas.url, "/key/update", json={"key_id": created["key_id"], "rpm_limit": 1})
    assert r.status_code == 200 and r.json()["rpm_limit"] == 1
    limited = chat(replicas.urls[1], key)  # the other replica sees the same counters
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.json()["error"]["type"] == "rate_limit_error"

    assert admin("POST", replicas.url, "/key/delete", json={"keys": [key]}).status_code == 200
    revoked = chat(replicas.url, key)  # revoked keys stop at once
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "key_revoked"

    expired = admin("POST", replicas.url, "/key/generate", json={"expires_at": "2001-01-01T00:00:00Z"}).json()
    assert chat(replicas.url, expired["key"]).json()["error"]["code"] == "key_expired"

    days = admin("GET", replicas.url, "/usage/days", params={"key_id": created["key_id"]}).json()["data"]
    assert days[0]["requests"] == 3 and days[0]["total_tokens"] == 20  # 403, 200 and 429 are recorded
    models = admin("GET", replicas.url, "/usage/models", params={"key_id": created["key_id"]}).json()["data"]
    assert {m["model"] for m in models} == {None, "cheap"}


def test_200_concurrent_requests_against_50_requests_of_quota(replicas):
    """At most 50 (+ number of replicas) succeed, the rest 429 with Retry-After; the ledger matches."""
    key = admin("POST", replicas.url, "/key/generate", json={"tokens_per_day": 50 * 20}).json()

    async def fire():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
            async def one(i):
                return await client.post(
                    replicas.urls[i % 2] + "/v1/chat/completions", headers={"Authorization": f"Bearer {key['key']}"},
                    json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})

            return await asyncio.gather(*[one(i) for i in range(200)])

    responses = asyncio.run(fire())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert 1 <= len(ok) <= 50 + 2 and len(ok) + len(refused) == 200
    assert all(int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "insufficient_quota"
               for r in refused)
    rows = admin("GET", replicas.url, "/spend/logs", params={"key_id": key["key_id"]}).json()["data"]
    assert sum(r["status"] == 200 for r in rows) == len(ok)
    assert sum(r["status"] == 429 for r in rows) == len(refused)
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) == sum(
        r.json()["usage"]["total_tokens"] for r in ok)


def test_cli_talks_to_the_admin_api(replicas, capsys, monkeypatch):
    monkeypatch.setenv("DOKA_MASTER_KEY", MASTER)
    assert doka(["keys", "generate", "--url", replicas.url, "--alias", "cli", "--tokens-per-day", "500",
                 "--models", "cheap,premium", "--budget-period", "month", "--max-budget", "2.5"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["key_alias"] == "cli" and created["models"] == ["cheap", "premium"]
    assert doka(["keys", "update", created["key_id"], "--url", replicas.url, "--rpm", "9"]) == 0
    assert json.loads(capsys.readouterr().out)["rpm_limit"] == 9
    assert doka(["keys", "info", created["key"], "--url", replicas.url]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_per_day"] == 500
    assert doka(["keys", "list", "--url", replicas.url]) == 0
    assert created["key_id"] in capsys.readouterr().out
    assert doka(["keys", "delete", created["key_id"], "--url", replicas.url]) == 0
    capsys.readouterr()
    assert doka(["keys", "usage", "--url", replicas.url, "--group-by", "model"]) == 0
    monkeypatch.setenv("DOKA_MASTER_KEY", "wrong")
    assert doka(["keys", "list", "--url", replicas.url]) == 1
    assert "HTTP 401" in capsys.readouterr().err
