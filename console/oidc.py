"""Console single sign-on: the OpenID Connect authorization code flow with PKCE (RFC 7636).

Ray-free. `start` makes the issuer URL to send the browser to and a short-lived pending-login
value (state, nonce, PKCE verifier) that the console keeps in a signed HttpOnly cookie; `finish`
checks the returned state against it, redeems the code at the issuer's token endpoint with the
verifier, verifies the ID token (signature against the issuer's JWKS, issuer, audience, expiry,
nonce) and returns who signed in. Only the configured issuer is ever contacted; its endpoints
come from its own discovery document, which must name the same issuer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from pydantic import BaseModel

from app.config import OIDCConfig, resolve_secret

PENDING_COOKIE = "doka_console_sso"
PENDING_TTL_S = 600  # a sign-in must come back from the issuer within 10 minutes
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")  # asymmetric only: never `none` or HS*
HTTP_TIMEOUT_S = 10.0


class SSOError(Exception):
    """A sign-in that failed: `status` 400 for a bad or stale callback, 403 for a refused user,
    502 when the issuer could not be used."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Identity(BaseModel):
    subject: str
    groups: list[str] = []
    name: str | None = None


class Pending(BaseModel):
    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    exp: float


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _sign(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, b"doka-sso|" + body.encode(), hashlib.sha256).digest())


def seal(p: Pending, secret: bytes) -> str:
    body = _b64(p.model_dump_json().encode())
    return f"{body}.{_sign(secret, body)}"


def unseal(value: str | None, secret: bytes) -> Pending:
    if not value or "." not in value:
        raise SSOError("no sign-in in progress (start again from the sign-in page)")
    body, mac = value.rsplit(".", 1)
    if not hmac.compare_digest(mac, _sign(secret, body)):
        raise SSOError("the sign-in cookie does not verify")
    p = Pending.model_validate_json(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if p.exp < time.time():
        raise SSOError("the sign-in took too long; start again")
    return p


def allowed(cfg: OIDCConfig, who: Identity) -> bool:
    """On an allow-list: the subject itself, or one of its groups."""
    return who.subject in cfg.admin_subjects or bool(set(who.groups) & set(cfg.admin_groups))


class OIDCClient:
    """One issuer's discovery document and keys, fetched on first use and kept (keys refetched
    once when a token names a key id it has not seen: the issuer rotated them)."""

    def __init__(self, cfg: OIDCConfig) -> None:
        self.cfg = cfg
        self._discovery: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKSet | None = None

    async def _get(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as c:
                r = await c.get(url)
        except httpx.HTTPError as e:
            raise SSOError(f"the issuer is unreachable ({type(e).__name__})", 502) from e
        if r.status_code != 200:
            raise SSOError(f"the issuer answered {r.status_code} for {url}", 502)
        try:
            return r.json()
        except ValueError as e:
            raise SSOError(f"the issuer's {url} is not JSON", 502) from e

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            doc = await self._get(f"{self.cfg.issuer}/.well-known/openid-configuration")
            if str(doc.get("issuer", "")).rstrip("/") != self.cfg.issuer:
                raise SSOError(f"the discovery document names issuer {doc.get('issuer')!r}, not {self.cfg.issuer!r}",
                               502)
            for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(field), str):
                    raise SSOError(f"the issuer's discovery document lacks {field}", 502)
            self._discovery = doc
        return self._discovery

    async def _key(self, kid: str | None) -> Any:
        for attempt in range(2):
            if self._jwks is None or attempt:
                try:
                    self._jwks = jwt.PyJWKSet.from_dict(await self._get((await self.discovery())["jwks_uri"]))
                except jwt.PyJWKSetError as e:
                    raise SSOError(f"the issuer's keys are unusable ({e})", 502) from e
            keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            if keys:
                return keys[0].key
        raise SSOError(f"the ID token's key {kid!r} is not among the issuer's keys")

    async def start(self, redirect_uri: str) -> tuple[str, Pending]:
        """The authorization URL to redirect to, and the pending login to keep in a cookie."""
        d = await self.discovery()
        verifier = secrets.token_urlsafe(48)
        p = Pending(state=secrets.token_urlsafe(24), nonce=secrets.token_urlsafe(24), verifier=verifier,
                    redirect_uri=redirect_uri, exp=time.time() + PENDING_TTL_S)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        query = urlencode({"response_type": "code", "client_id": self.cfg.client_id, "redirect_uri": redirect_uri,
                           "scope": " ".join(self.cfg.scopes), "state": p.state, "nonce": p.nonce,
                           "code_challenge": challenge, "code_challenge_method": "S256"})
        sep = "&" if "?" in d["authorization_endpoint"] else "?"
        return f"{d['authorization_endpoint']}{sep}{query}", p

    async def finish(self, pending: Pending, params: dict[str, str]) -> Identity:
        """Check the callback, redeem its code, verify the ID token; who signed in."""
        if "error" in params:
            raise SSOError(f"the issuer refused the sign-in: {params.get('error')} {params.get('error_description', '')}"
                           .strip(), 403)
        if not hmac.compare_digest(params.get("state", ""), pending.state):
            raise SSOError("the callback's state does not match this browser's sign-in")
        code = params.get("code")
        if not code:
            raise SSOError("the callback carries no code")
        d = await self.discovery()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "code_verifier": pending.verifier, "client_id": self.cfg.client_id}
        secret = resolve_secret(self.cfg.client_secret) if self.cfg.client_secret else None
        auth = httpx.BasicAuth(self.cfg.client_id, secret) if secret else None
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as c:
                r = await c.post(d["token_endpoint"], data=form, auth=auth)
        except httpx.HTTPError as e:
            raise SSOError(f"the issuer's token endpoint is unreachable ({type(e).__name__})", 502) from e
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code != 200 or not isinstance(body.get("id_token"), str):
            raise SSOError(f"the issuer did not redeem the code ({r.status_code} {body.get('error', '')})".strip(), 502)
        return await self.verify(body["id_token"], pending.nonce)

    async def verify(self, id_token: str, nonce: str) -> Identity:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as e:
            raise SSOError(f"the ID token is malformed ({e})") from e
        if header.get("alg") not in ALGORITHMS:
            raise SSOError(f"the ID token's algorithm {header.get('alg')!r} is not accepted")
        key = await self._key(header.get("kid"))
        try:
            claims = jwt.decode(id_token, key, algorithms=list(ALGORITHMS), audience=self.cfg.client_id,
                                issuer=self.cfg.issuer, leeway=60,
                                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.PyJWTError as e:
            raise SSOError(f"the ID token does not verify ({e})") from e
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SSOError("the ID token's nonce does not match this sign-in")
        groups = claims.get(self.cfg.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        return Identity(subject=str(claims["sub"]), groups=[str(g) for g in groups if isinstance(g, (str, int))],
                        name=claims.get("email") or claims.get("name"))


_clients: dict[str, OIDCClient] = {}


def client_for(cfg: OIDCConfig) -> OIDCClient:
    """One client per issuer configuration in this process (its discovery and keys cached)."""
    key = json.dumps(cfg.model_dump(), sort_keys=True)
    if key not in _clients:
        _clients[key] = OIDCClient(cfg)
    return _clients[key]
