"""Console single sign-on (OpenID Connect, authorization code + PKCE) against a local issuer the
test starts (tests/oidc_issuer.py): the flow through a real keyed gateway, the allow-list, and
the checks on state, audience and the PKCE verifier (issue 34)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.config import ConfigError, OIDCConfig, parse_config
from console import oidc
from tests.conftest import gateway_test_config
from tests.keyed_gateway import keyed_gateway
from tests.oidc_issuer import Issuer

MASTER = "sk-doka-console-sso-master"
CLIENT_ID, CLIENT_SECRET = "doka-console", "issuer-test-secret"


@pytest.fixture(scope="module")
def issuer():
    with Issuer(CLIENT_ID, CLIENT_SECRET) as iss:
        yield iss


@pytest.fixture(autouse=True)
def _alice(issuer):
    issuer.user = {"sub": "alice", "groups": ["platform"], "email": "alice@example.test"}
    issuer.audience = None


def _cfg(issuer: Issuer, **over) -> OIDCConfig:
    return OIDCConfig(**{"issuer": issuer.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                         "admin_groups": ["platform"], **over})


# ------------------------------------------------------------------ Ray-free: config and the client
def test_config_takes_https_or_loopback_issuers_and_needs_an_allow_list():
    base = gateway_test_config(9100, 8000)
    for issuer in ("http://idp.example.com", "ftp://127.0.0.1", "https://"):
        with pytest.raises(ConfigError, match="issuer"):
            parse_config({**base, "console": {"oidc": {"issuer": issuer, "client_id": "c", "admin_subjects": ["a"]}}})
    with pytest.raises(ConfigError, match="admin_subjects or admin_groups"):
        parse_config({**base, "console": {"oidc": {"issuer": "https://idp.example.com", "client_id": "c"}}})
    cfg = parse_config({**base, "console": {"oidc": {"issuer": "https://idp.example.com/", "client_id": "c",
                                                     "admin_groups": ["ops"]}}})
    assert cfg.console.oidc.issuer == "https://idp.example.com" and cfg.console.oidc.scopes[0] == "openid"


def _authorize(url: str) -> dict[str, str]:
    """What the browser does at the issuer: follow its redirect back, return the callback's query."""
    r = httpx.get(url, follow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    return {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}


def test_client_flow_pkce_state_nonce_and_audience(issuer):
    async def flow(cfg: OIDCConfig, tamper=None) -> oidc.Identity:
        client = oidc.OIDCClient(cfg)
        url, pending = await client.start("http://127.0.0.1:1/cb")
        q = parse_qs(urlsplit(url).query)
        assert q["code_challenge_method"] == ["S256"] and q["state"] == [pending.state]
        assert q["code_challenge"][0] != pending.verifier  # the verifier itself never leaves
        params = _authorize(url)
        if tamper:
            params, pending = tamper(params, pending)
        return await client.finish(pending, params)

    who = asyncio.run(flow(_cfg(issuer)))
    assert who.subject == "alice" and who.groups == ["platform"] and who.name == "alice@example.test"
    assert oidc.allowed(_cfg(issuer), who) and not oidc.allowed(_cfg(issuer, admin_groups=["other"]), who)
    assert oidc.allowed(_cfg(issuer, admin_groups=[], admin_subjects=["alice"]), who)
    assert issuer.token_requests[-1]["code_verifier"]  # redeemed with the verifier

    with pytest.raises(oidc.SSOError, match="state"):
        asyncio.run(flow(_cfg(issuer), lambda p, pend: ({**p, "state": "forged"}, pend)))
    with pytest.raises(oidc.SSOError, match="did not redeem"):  # a wrong verifier: the issuer refuses
        asyncio.run(flow(_cfg(issuer), lambda p, pend: (p, pend.model_copy(update={"verifier": "x" * 64}))))
    with pytest.raises(oidc.SSOError, match="nonce"):
        asyncio.run(flow(_cfg(issuer), lambda p, pend: (p, pend.model_copy(update={"nonce": "other"}))))
    with pytest.raises(oidc.SSOError, match="did not redeem"):  # wrong client secret
        asyncio.run(flow(_cfg(issuer, client_secret="wrong")))
    issuer.audience = "another-client"
    with pytest.raises(oidc.SSOError, match="does not verify"):
        asyncio.run(flow(_cfg(issuer)))


def test_pending_login_cookie_is_signed_and_expires():
    secret = b"s" * 32
    p = oidc.Pending(state="st", nonce="n", verifier="v", redirect_uri="http://x/cb", exp=9e9)
    assert oidc.unseal(oidc.seal(p, secret), secret) == p
    with pytest.raises(oidc.SSOError, match="does not verify"):
        oidc.unseal(oidc.seal(p, secret), b"t" * 32)
    with pytest.raises(oidc.SSOError, match="no sign-in"):
        oidc.unseal(None, secret)
    with pytest.raises(oidc.SSOError, match="too long"):
        oidc.unseal(oidc.seal(p.model_copy(update={"exp": 1.0}), secret), secret)


# ------------------------------------------------------------------ through the gateway
@pytest.fixture(scope="module")
def gw(ray_cluster, mock_upstream, issuer, tmp_path_factory):
    def edit(raw: dict) -> None:
        raw["console"] = {"oidc": {"issuer": issuer.url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                                   "admin_groups": ["platform"], "admin_subjects": ["carol"]}}

    yield from keyed_gateway(mock_upstream, tmp_path_factory.mktemp("sso"), app="doka-sso", prefix="/sso",
                             master=MASTER, edit=edit)


def test_sso_sign_in_through_the_gateway(gw, issuer):
    with httpx.Client(base_url=gw.url + "/console", timeout=30, follow_redirects=True) as c:
        assert 'id="sso"' in c.get("/login").text
        done = c.get("/sso/start")  # -> issuer /authorize -> our callback
        assert done.status_code == 200 and "Signed in" in done.text, done.text[-1000:]
        keys = c.get("/keys")
        assert keys.status_code == 200 and "sso:alice@example.test" in keys.text
        assert str(keys.url).endswith("/console/keys")


def test_sso_subject_outside_the_allow_list_is_refused(gw, issuer):
    issuer.user = {"sub": "bob", "groups": ["marketing"], "email": "bob@example.test"}
    with httpx.Client(base_url=gw.url + "/console", timeout=30, follow_redirects=True) as c:
        refused = c.get("/sso/start")
        assert refused.status_code == 403 and "not on the console&#x27;s admin allow-list" in refused.text
        assert c.get("/keys", follow_redirects=False).status_code == 303  # no session
    issuer.user = {"sub": "carol", "groups": [], "email": "carol@example.test"}  # listed by subject
    with httpx.Client(base_url=gw.url + "/console", timeout=30, follow_redirects=True) as c:
        assert c.get("/sso/start").status_code == 200 and c.get("/keys").status_code == 200


def test_sso_callback_without_this_browsers_sign_in_is_refused(gw, issuer):
    with httpx.Client(base_url=gw.url + "/console", timeout=30, follow_redirects=False) as c:
        start = c.get("/sso/start")
        assert start.status_code == 303
        params = _authorize(start.headers["location"])
    with httpx.Client(base_url=gw.url + "/console", timeout=30) as other:  # another browser: no cookie
        r = other.get("/sso/callback", params=params)
        assert r.status_code == 400 and "no sign-in in progress" in r.text
        assert other.get("/keys").status_code == 303
