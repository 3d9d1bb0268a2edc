"""The accounts database (a real PostgreSQL server) goes away under load and comes back.

While it is down: a key the gateway already knows keeps working (its ledger rows wait in
memory), a request that needs the database (a key not seen yet, the admin API) gets a clear
503 in OpenAI shape with Retry-After, never a 500. When PostgreSQL is back, with no gateway
restart: the unknown key works and every answered request has its ledger row.
"""

from __future__ import annotations

import time

import httpx
import pytest

from load.faults import ScenarioResult, chat_body, drive, ledger_missing, record
from tests.accounts_support import PgServer
from tests.faults_support import deploy_app, openai_error_shape

CLIENTS = 4


@pytest.fixture(scope="module")
def pg():
    server = PgServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def app(ray_cluster, mock_upstream, tmp_path_factory, pg):
    from ray import serve

    a = deploy_app("doka-faults-db", "/faults-db", mock_upstream.port, str(tmp_path_factory.mktemp("fdb")),
                   database_url=pg.create_db())
    yield a
    serve.delete(a.name)


def _post(app, key: str) -> httpx.Response:
    return httpx.post(f"{app.url}/v1/chat/completions", json=chat_body("mock-gpt-3.5"),
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_database_outage_gives_503_and_recovers_without_restart(app, mock, pg):
    known, unseen = app.new_key(), app.new_key()
    assert _post(app, known["key"]).status_code == 200  # the gateway now knows this key
    auth = lambda i: {"Authorization": f"Bearer {known['key']}"}  # noqa: E731

    pg.stop()
    down_at = time.monotonic()
    try:
        run = drive(f"{app.url}/v1/chat/completions", lambda i: chat_body("mock-gpt-3.5"), clients=CLIENTS,
                    requests=24, headers=auth)
        need_db = _post(app, unseen["key"])
        admin = app.admin("POST", "/key/generate", json={})
    finally:
        pg.start()
    down_s = time.monotonic() - down_at

    # recovery: no restart, the unseen key is admitted once the database answers again
    deadline, recovered_after = time.time() + 60, None
    while time.time() < deadline:
        if _post(app, unseen["key"]).status_code == 200:
            recovered_after = time.time()
            break
        time.sleep(0.5)
    after = drive(f"{app.url}/v1/chat/completions", lambda i: chat_body("mock-gpt-3.5"), clients=CLIENTS,
                  requests=12, headers=auth)
    lost = ledger_missing(run, app.ledger_ids(known["key_id"])) + ledger_missing(after, app.ledger_ids(known["key_id"]))
    clear_503 = [r for r in (need_db, admin) if r.status_code == 503 and openai_error_shape(r.json())
                 and int(r.headers.get("Retry-After", "0")) >= 1]
    passed = (run.errors == 0 and len(clear_503) == 2 and recovered_after is not None and after.errors == 0
              and not lost)
    record(ScenarioResult(
        scenario="accounts database (PostgreSQL) down",
        load=f"{run.requests} req on a known key, {CLIENTS} clients, + unknown key + admin call",
        faults=f"PostgreSQL stopped ~{down_s:.0f} s, then started",
        requests=run.requests + 2 + after.requests, errors=run.errors + after.errors, expected_errors=0,
        status_counts={**run.statuses(), "unknown key": need_db.status_code, "admin": admin.status_code},
        data_lost=len(lost), passed=passed,
        notes="known keys served from cache, ledger rows buffered then flushed; requests needing the "
              "database: 503 accounts_unavailable + Retry-After; recovered without restart"))
    assert run.errors == 0, run.statuses()  # known key: served while the database is down
    assert need_db.status_code == 503, need_db.text
    assert need_db.json()["error"]["code"] == "accounts_unavailable" and openai_error_shape(need_db.json())
    assert admin.status_code == 503 and openai_error_shape(admin.json()), admin.text
    assert len(clear_503) == 2
    assert recovered_after is not None, "the gateway did not recover after PostgreSQL came back"
    assert after.errors == 0
    assert not lost, f"answers without a ledger row: {lost[:5]}"
