"""A local OpenID Connect issuer for the console's SSO tests: discovery, JWKS, an authorization
endpoint that signs in whichever user the test set (no login form), and a token endpoint that
checks the client secret, the redirect URI and the PKCE verifier before it issues an RS256 ID
token. Runs on 127.0.0.1 in a thread (uvicorn)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from tests.conftest import free_port


class Issuer:
    def __init__(self, client_id: str, client_secret: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id, self.client_secret = client_id, client_secret
        self.user: dict[str, Any] = {"sub": "alice", "groups": ["platform"], "email": "alice@example.test"}
        self.audience: str | None = None  # set to mint tokens for another client
        self.token_requests: list[dict[str, str]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(4)
        self._codes: dict[str, dict[str, Any]] = {}
        app = Starlette(routes=[Route("/.well-known/openid-configuration", self._discovery),
                                Route("/jwks", self._jwks), Route("/authorize", self._authorize),
                                Route("/token", self._token, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "Issuer":
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            assert time.time() < deadline, "issuer did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    async def _discovery(self, request: Request) -> JSONResponse:
        return JSONResponse({"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                             "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                             "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
                             "id_token_signing_alg_values_supported": ["RS256"]})

    async def _jwks(self, request: Request) -> JSONResponse:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return JSONResponse({"keys": [{**jwk, "kid": self._kid, "use": "sig", "alg": "RS256"}]})

    async def _authorize(self, request: Request) -> RedirectResponse | JSONResponse:
        q = request.query_params
        if q.get("client_id") != self.client_id or q.get("response_type") != "code" \
                or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"],
                             "nonce": q.get("nonce"), "user": dict(self.user)}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q.get('state', '')})}",
                                status_code=302)

    async def _token(self, request: Request) -> JSONResponse:
        form = dict(await request.form())
        self.token_requests.append(form)
        auth = request.headers.get("authorization", "")
        want = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if auth != want:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = self._codes.pop(form.get("code", ""), None)  # a code redeems once
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, status_code=400)
        now = int(time.time())
        claims = {"iss": self.url, "aud": self.audience or self.client_id, "iat": now, "exp": now + 300,
                  "nonce": grant["nonce"], **grant["user"]}
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})
        return JSONResponse({"access_token": "at", "token_type": "Bearer", "id_token": token})
