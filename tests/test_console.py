"""The operator console: sessions and CSRF as units, then the pages through a real keyed gateway
(httpx), then in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium),
which also takes the screenshots in docs/console.md when DOKA_SCREENSHOTS=1 (a plain test run never
writes into the tracked tree)."""

from __future__ import annotations

import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from console import session as sess
from console.pages import bar_chart
from tests.keyed_gateway import keyed_gateway, new_key

MASTER = "sk-master-console"
IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
SCREENSHOTS = os.environ.get("DOKA_SCREENSHOTS") == "1"
CHROMIUM = os.environ.get("DOKA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DOKA_CHROMEDRIVER", "/usr/bin/chromedriver")


# ------------------------------------------------------------------ units
def test_session_round_trip_and_forgery():
    secret = sess.secret_from("mk")
    s = sess.new_session("key", "alias", key_id="k1")
    token = sess.encode(s, secret)
    assert sess.decode(token, secret) == s
    assert sess.decode(token, sess.secret_from("other")) is None  # another master key: signed out
    body, mac = token.rsplit(".", 1)
    forged = sess.new_session("admin", "master").model_dump_json().encode()
    assert sess.decode(sess._b64(forged) + "." + mac, secret) is None
    assert sess.decode("garbage", secret) is None and sess.decode(None, secret) is None
    old = sess.new_session("admin", "master", ttl_s=-1)
    assert sess.decode(sess.encode(old, secret), secret) is None


def test_csrf_token_is_per_session():
    secret = sess.secret_from("mk")
    a, b = sess.new_session("admin", "master"), sess.new_session("admin", "master")
    assert sess.csrf_ok(a, secret, sess.csrf_token(a, secret))
    assert not sess.csrf_ok(a, secret, sess.csrf_token(b, secret))
    assert not sess.csrf_ok(a, secret, None) and not sess.csrf_ok(a, secret, "")


def test_bar_chart_is_inline_svg_with_escaped_labels():
    svg = bar_chart([("2026-01-01", 1.0), ("<x>", 3.0)], title="t & u")
    assert svg.count("<rect") == 2 and "&lt;x&gt;" in svg and "t &amp; u" in svg and "http" not in svg
    assert "no data" in bar_chart([], title="empty")


def test_spend_rollup_matches_the_ledger(tmp_path):
    """Finished days come from the rollup, the last two from the ledger: the sums must agree."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import insert

    from accounts import console_queries as q
    from accounts import db
    from accounts.models import Key, LedgerEntry

    engine = db.make_engine(f"sqlite:///{tmp_path / 'acc.sqlite'}")
    db.migrate(engine)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(insert(Key), [{"id": "k1", "key_hash": "h1", "key_hint": "x", "team": "red", "meta": {},
                                    "models": []}])
        rows = []
        for i, age in enumerate((40, 40, 10, 1, 0, 0)):
            t = now - timedelta(days=age)
            rows.append({"request_id": f"r{i}", "key_id": "k1" if i % 3 else None, "model": "m1" if i % 2 else "m2",
                         "prompt_tokens": 10 * i, "completion_tokens": i, "cost_usd": 0.5 * i, "status": 200,
                         "created_at": t, "day": t.strftime("%Y-%m-%d")})
        conn.execute(insert(LedgerEntry), rows)
    by_team = {r["group"]: r for r in q.spend(engine, "team")}
    assert by_team["red"]["requests"] == 4 and by_team[None]["requests"] == 2
    assert abs(sum(r["cost_usd"] for r in by_team.values()) - 0.5 * sum(range(6))) < 1e-9
    with engine.connect() as conn:
        rolled = conn.exec_driver_sql("select count(*), sum(requests) from doka_spend_daily").one()
    assert rolled[1] == 3  # the two 40-day-old rows and the 10-day-old one; the last two days stay live
    assert q.refresh_rollup(engine, q.rollup_cutoff()) == 0  # nothing new to roll up
    by_day = q.spend(engine, "day")
    assert sum(r["requests"] for r in by_day) == 6 and by_day == sorted(by_day, key=lambda r: r["group"])
    one = q.spend(engine, "model", key_id="k1", start=(now - timedelta(days=15)).strftime("%Y-%m-%d"))
    assert sum(r["requests"] for r in one) == 3  # rows 2 (10 days ago), 4 and 5 (today); row 1 is too old
    assert [r["request_id"] for r in q.recent_requests(engine, limit=2)] == ["r5", "r4"]
    assert [r["model"] for r in q.request_rows(engine, "r3")] == ["m1"]


# ------------------------------------------------------------------ through the gateway
@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, tmp_path_factory):
    yield from keyed_gateway(mock_upstream, tmp_path_factory.mktemp("console"), app="doka-console",
                             prefix="/cg", master=MASTER)


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


@contextmanager
def _signed_in(gw, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url + "/console", timeout=30) as c:
        r = c.post("/login", data={"key": key})
        assert r.status_code == 303, r.text
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/cg/console" in cookie
        yield c


def test_pages_need_a_session_and_a_good_key(gw):
    with httpx.Client(base_url=gw.url + "/console", timeout=30) as c:
        assert c.get("/keys").status_code == 303  # to the sign-in page
        assert c.get("/login").status_code == 200
        bad = c.post("/login", data={"key": "sk-doka-not-a-key"})
        assert bad.status_code == 401 and "unknown" in bad.text
        assert c.post("/keys", data={"key_alias": "x"}).status_code == 401
    with httpx.Client(base_url=gw.url + "/console", timeout=30, cookies={sess.COOKIE: "e30.bad"}) as c:
        assert c.get("/keys").status_code == 303  # a forged cookie is no session
        assert c.get("/static/../../etc/passwd").status_code == 404
        css = c.get("/static/console.css")
        assert css.status_code == 200 and "text/css" in css.headers["content-type"]


def test_master_session_changes_need_the_csrf_token(gw):
    with _signed_in(gw, MASTER) as c:
        page = c.get("/keys")
        assert page.status_code == 200 and "Create a key" in page.text
        refused = c.post("/keys", data={"key_alias": "no-csrf"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        wrong = c.post("/keys", data={"key_alias": "no-csrf", "csrf": "x" * 43})
        assert wrong.status_code == 403
        assert "no-csrf" not in c.get("/keys").text  # nothing was created
        made = c.post("/keys", data={"key_alias": "with-csrf", "team": "t1", "tokens_per_day": "500",
                                     "csrf": _csrf(page.text)})
        assert made.status_code == 200 and "shown once" in made.text
        plain = re.search(r'id="new-key">([^<]+)<', made.text).group(1)
        assert plain.startswith("sk-") and plain not in c.get("/keys").text  # revealed once only
        key_id = next(k for k in httpx.get(gw.url + "/key/list", headers={"Authorization": f"Bearer {MASTER}"})
                      .json()["keys"] if k["key_alias"] == "with-csrf")["key_id"]
        upd = c.post(f"/keys/{key_id}/update", data={"rpm_limit": "7", "tokens_per_day": "", "csrf": _csrf(page.text)})
        assert upd.status_code == 303
        info = httpx.get(gw.url + "/key/info", params={"key_id": key_id},
                         headers={"Authorization": f"Bearer {MASTER}"}).json()
        assert info["rpm_limit"] == 7 and info["tokens_per_day"] is None
        assert "with-csrf" in c.get("/keys", params={"team": "t1"}).text
        assert "with-csrf" not in c.get("/keys", params={"q": "nothing-matches"}).text


def test_a_plain_key_sees_only_its_own_page(gw):
    own = new_key(gw, key_alias="plain-key")
    other = new_key(gw, key_alias="other-key")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=own["key"], max_retries=0)
    client.chat.completions.create(model="mock-gpt-3.5", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    with _signed_in(gw, own["key"]) as c:
        me = c.get("/me")
        assert me.status_code == 200 and own["key_id"] in me.text and "mock-gpt-3.5" in me.text
        assert other["key_id"] not in me.text
        for path in ("/keys", "/spend", "/spend.csv", "/requests", "/requests/x", "/routing", "/models"):
            r = c.get(path)
            assert r.status_code == 403, (path, r.status_code)
        token = _csrf(me.text)
        assert c.post("/keys", data={"key_alias": "escalate", "csrf": token}).status_code == 403
        assert c.post(f"/keys/{other['key_id']}/revoke", data={"csrf": token}).status_code == 403
        assert httpx.get(gw.url + "/key/list", headers={"Authorization": f"Bearer {own['key']}"}).status_code == 401
        still = httpx.get(gw.url + "/key/info", params={"key_id": other["key_id"]},
                          headers={"Authorization": f"Bearer {MASTER}"}).json()
        assert still["revoked_at"] is None
        httpx.post(gw.url + "/key/delete", json={"key_ids": [own["key_id"]]},
                   headers={"Authorization": f"Bearer {MASTER}"}).raise_for_status()
        assert c.get("/me").status_code == 303  # a revoked key's session ends


def test_an_admin_key_signs_in_as_admin(gw):
    adm = new_key(gw, key_alias="ops", metadata={"role": "admin"})
    with _signed_in(gw, adm["key"]) as c:
        assert c.get("/keys").status_code == 200 and c.get("/spend").status_code == 200


def test_spend_csv_and_requests(gw):
    k = new_key(gw, key_alias="spender", team="payments")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=k["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "2+2?"}], max_tokens=8)
    done, answered, rid = raw.parse(), raw.headers["x-doka-model"], raw.headers["x-doka-request-id"]
    with _signed_in(gw, MASTER) as c:
        csv_team = c.get("/spend.csv", params={"group_by": "team"})
        assert csv_team.status_code == 200 and csv_team.headers["content-type"].startswith("text/csv")
        line = next(l for l in csv_team.text.splitlines() if l.startswith("payments,"))
        assert int(line.split(",")[1]) == 1 and int(line.split(",")[4]) == done.usage.total_tokens
        assert c.get("/spend.csv", params={"group_by": "nope"}).status_code == 400
        spend = c.get("/spend")
        assert spend.status_code == 200 and "<svg" in spend.text and "payments" in spend.text
        reqs = c.get("/requests", params={"key_id": k["key_id"]})
        assert reqs.status_code == 200 and "<td>auto</td>" in reqs.text and f"<td>{answered}</td>" in reqs.text
        assert f'href="/cg/console/requests/{rid}"' in reqs.text
        detail = c.get(f"/requests/{rid}")
        assert detail.status_code == 200 and "route reason" in detail.text and k["key_id"] in detail.text
        assert raw.headers["x-doka-route-reason"].split(" ")[0] in detail.text
        routing = c.get("/routing")
        assert routing.status_code == 200 and 'id="saving"' in routing.text and f"<td>{answered}</td>" in routing.text
        models = c.get("/models")
        assert models.status_code == 200 and "mock-gpt-3.5" in models.text and "fallback chain" in models.text


# ------------------------------------------------------------------ in a real browser
def _driver():
    if not (shutil.which(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"chromium or chromedriver missing ({CHROMIUM}, {CHROMEDRIVER}): run scripts/ensure_chromium.sh")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the `test` extra")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1360,900", "--disable-extensions"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def browser():
    d = _driver()
    d.set_page_load_timeout(60)
    d.implicitly_wait(10)  # elements of a page that is still loading after a click
    yield d
    d.quit()


def _wait_url(driver, suffix: str) -> None:
    """A click that submits a form returns before the next page: wait for it."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith(suffix))


def _shot(driver, name: str) -> None:
    if not SCREENSHOTS:
        return
    IMG.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1360, min(max(600, height + 40), 2000))
    driver.save_screenshot(str(IMG / f"console-{name}.png"))
    driver.set_window_size(1360, 900)


def test_browser_key_lifecycle(gw, browser):
    from selenium.webdriver.common.by import By

    d, base = browser, gw.url + "/console"
    d.get(base + "/keys")
    assert d.current_url.endswith("/console/login")
    _shot(d, "login")
    d.find_element(By.ID, "key").send_keys(MASTER)
    d.find_element(By.ID, "signin").click()
    _wait_url(d, "/console/keys")
    assert not [c for c in d.get_cookies() if c["name"] == sess.COOKIE and not c["httpOnly"]]
    assert d.execute_script("return document.cookie").find(sess.COOKIE) == -1  # HttpOnly: scripts cannot read it

    form = d.find_element(By.ID, "create")
    form.find_element(By.NAME, "key_alias").send_keys("browser-e2e")
    form.find_element(By.NAME, "team").send_keys("search")
    form.find_element(By.NAME, "tokens_per_day").send_keys("100000")
    d.find_element(By.ID, "create-key").click()
    plain = d.find_element(By.ID, "new-key").text
    assert plain.startswith("sk-")
    _shot(d, "keys")

    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=plain, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=8)
    assert raw.parse().choices[0].message.content
    answered, rid = raw.headers["x-doka-model"], raw.headers["x-doka-request-id"]

    d.get(base + "/requests")
    deadline = time.time() + 20
    while rid[:18] not in d.page_source and time.time() < deadline:
        time.sleep(0.5)
        d.refresh()
    row = d.find_element(By.CSS_SELECTOR, "table.requests tbody tr")
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == rid[:18] and cells[3] == "auto" and cells[4] == answered, cells
    assert cells[5] and cells[8].startswith("$") and float(cells[8][1:]) > 0 and cells[9] == "200", cells
    _shot(d, "requests")
    row.find_element(By.TAG_NAME, "a").click()
    assert "route reason" in d.page_source
    _shot(d, "request")

    d.get(base + "/spend")
    assert d.find_elements(By.CSS_SELECTOR, "figure.chart svg rect") and "search" in d.page_source
    _shot(d, "spend")
    d.get(base + "/routing")
    assert answered in d.find_element(By.CSS_SELECTOR, "table.share").text
    _shot(d, "routing")
    d.get(base + "/models")
    assert "mock-gpt-3.5" in d.find_element(By.CSS_SELECTOR, "table.models").text
    _shot(d, "models")

    # a change without the CSRF token, sent from the signed-in page itself, is refused
    status = d.execute_async_script(
        "const done = arguments[0]; fetch('keys', {method: 'POST', credentials: 'same-origin', headers: "
        "{'content-type': 'application/x-www-form-urlencoded'}, body: 'key_alias=sneaky'}).then(r => done(r.status))")
    assert status == 403

    d.get(base + "/keys?q=browser-e2e")
    d.find_element(By.CSS_SELECTOR, "table.keys button.revoke").click()
    _wait_url(d, "/console/keys")  # the POST's redirect: the revocation is done
    d.get(base + "/keys?q=browser-e2e&revoked=on")
    assert "revoked" in d.find_element(By.CSS_SELECTOR, "table.keys tbody").text
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "again"}], max_tokens=8)
    assert "sneaky" not in d.page_source


def test_browser_plain_key_page(gw, browser):
    from selenium.webdriver.common.by import By

    k = new_key(gw, key_alias="team-member", team="search")
    openai.OpenAI(base_url=gw.url + "/v1", api_key=k["key"], max_retries=0).chat.completions.create(
        model="mock-gpt-3.5", messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    d, base = browser, gw.url + "/console"
    d.delete_all_cookies()
    d.get(base + "/login")
    d.find_element(By.ID, "key").send_keys(k["key"])
    d.find_element(By.ID, "signin").click()
    _wait_url(d, "/console/me")
    assert k["key_id"] in d.page_source
    _shot(d, "me")
    d.get(base + "/keys")
    assert "admin only" in d.page_source
