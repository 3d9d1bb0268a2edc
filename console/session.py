"""Console sessions: signed, stateless cookies and CSRF tokens.

The signing secret is derived from the master key, so every ingress replica agrees without
shared state and rotating the master key signs everyone out. The cookie is HttpOnly and
SameSite=Strict; every change also needs the session's CSRF token (a hidden form field or the
`x-csrf-token` header), which only a page of the console can read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel

COOKIE = "doka_console"
TTL_S = 8 * 3600


class Session(BaseModel):
    """Who is signed in: an admin (master key, admin key, SSO) or one virtual key."""

    sid: str
    role: Literal["admin", "key"]
    subject: str  # "master", a key id, or an SSO subject
    key_id: str | None = None
    exp: float

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def secret_from(master_key: str) -> bytes:
    return hashlib.sha256(b"doka-console-session|" + master_key.encode()).digest()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _mac(secret: bytes, msg: bytes) -> str:
    return _b64(hmac.new(secret, msg, hashlib.sha256).digest())


def new_session(role: Literal["admin", "key"], subject: str, key_id: str | None = None,
                ttl_s: float = TTL_S) -> Session:
    return Session(sid=secrets.token_urlsafe(16), role=role, subject=subject, key_id=key_id, exp=time.time() + ttl_s)


def encode(session: Session, secret: bytes) -> str:
    body = _b64(session.model_dump_json().encode())
    return f"{body}.{_mac(secret, body.encode())}"


def decode(token: str | None, secret: bytes) -> Session | None:
    """The session in a cookie value, or None if absent, forged, malformed or expired."""
    if not token or "." not in token:
        return None
    body, mac = token.rsplit(".", 1)
    if not hmac.compare_digest(mac, _mac(secret, body.encode())):
        return None
    try:
        s = Session.model_validate(json.loads(_unb64(body)))
    except (ValueError, TypeError):
        return None
    return s if s.exp > time.time() else None


def csrf_token(session: Session, secret: bytes) -> str:
    return _mac(secret, b"csrf|" + session.sid.encode())


def csrf_ok(session: Session, secret: bytes, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given, csrf_token(session, secret))
