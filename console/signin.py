"""Who is signed in to the console: password-less sign-in with a key, OpenID Connect SSO,
sessions and CSRF checks (`page`, the decorator every console page goes through), sign-out.

Admin pages need an admin session (master key, or a key whose metadata has `"role": "admin"`);
any other virtual key sees only its own key's page. Every POST checks the session's CSRF token
before doing anything. The pages themselves are in console/routes.py.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from accounts.errors import AccountsError
from console import gateway_view, oidc
from console import session as sess
from console.pages import e, layout

PREFIX = "/console"


class Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _base(request: Request) -> str:
    """The console's URL path under whatever route prefix the app is served at."""
    path = request.url.path
    return path[: path.index(PREFIX) + len(PREFIX)] if PREFIX in path else PREFIX


def current_accounts() -> Any:
    from accounts.gateway import current

    return current()


def _secret() -> bytes:
    from accounts.gateway import _current_master

    mk = _current_master()
    if not mk:
        raise Refused(HTMLResponse("<p>The console needs accounts on and a master key (DOKA_MASTER_KEY).</p>",
                                   status_code=503))
    return sess.secret_from(mk)


async def _form(request: Request) -> dict[str, str]:
    raw = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


class Ctx:
    """One request's signed-in session, its CSRF token and the console's base path."""

    def __init__(self, request: Request, s: sess.Session, secret: bytes) -> None:
        self.request, self.s, self.secret = request, s, secret
        self.base = _base(request)
        self.csrf = sess.csrf_token(s, secret)

    def page(self, title: str, body: str, active: str = "", status: int = 200) -> HTMLResponse:
        who = "master key" if self.s.subject == "master" else self.s.subject
        return HTMLResponse(layout(self.base, title, body, active=active, who=who, csrf=self.csrf,
                                   admin=self.s.admin), status_code=status)


async def _signed_in(request: Request, *, admin: bool, change: bool) -> tuple[Ctx, dict[str, str]]:
    secret = _secret()
    s = sess.decode(request.cookies.get(sess.COOKIE), secret)
    base = _base(request)
    if s is None:
        if request.method == "GET":
            raise Refused(RedirectResponse(f"{base}/login", status_code=303))
        raise Refused(PlainTextResponse("not signed in", status_code=401))
    form: dict[str, str] = {}
    if change:
        form = await _form(request)
        if not sess.csrf_ok(s, secret, request.headers.get("x-csrf-token") or form.get("csrf")):
            raise Refused(PlainTextResponse("CSRF token missing or wrong", status_code=403))
    if s.role == "key":  # a revoked or expired key's session ends at once
        try:
            info = await current_accounts().call("key_info", None, s.key_id)
        except AccountsError:
            info = None
        if info is None or info.get("revoked_at") or _expired(info):
            r = RedirectResponse(f"{base}/login", status_code=303)
            r.delete_cookie(sess.COOKIE, path=base)
            raise Refused(r)
    if admin and not s.admin:
        raise Refused(PlainTextResponse("admin only: sign in with the master key or an admin key", status_code=403))
    return Ctx(request, s, secret), form


def _expired(info: dict[str, Any]) -> bool:
    exp = info.get("expires_at")
    return bool(exp) and datetime.fromisoformat(exp) <= datetime.now(timezone.utc)


def page(*, admin: bool = True, change: bool = False):
    """Decorator: sign-in (and CSRF on changes) checked before the handler runs."""

    def wrap(fn: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                ctx, form = await _signed_in(request, admin=admin, change=change)
                return await fn(ctx, form) if change else await fn(ctx)
            except Refused as r:
                return r.response
            except AccountsError as err:
                return PlainTextResponse(err.message, status_code=err.status)

        endpoint.__name__ = fn.__name__
        endpoint.__doc__ = fn.__doc__
        return endpoint

    return wrap


def _login_page(base: str, error: str | None = None, status: int = 200) -> HTMLResponse:
    err = f'<p class="error">{e(error)}</p>' if error else ""
    body = (f'{err}<div class="card"><form method="post" action="{base}/login" class="inline">'
            f'<label>Key <input type="password" name="key" id="key" size="48" autocomplete="off" '
            f'placeholder="master key, admin key or your virtual key"></label><button id="signin">Sign in</button>'
            f'</form><p class="muted">The master key or an admin key opens every page; any other key sees its '
            f'own usage.</p></div>')
    sso = _oidc_config()
    if sso is not None:
        body += f'<div class="card"><a class="button" id="sso" href="{base}/sso/start">{e(sso.label)}</a></div>'
    return HTMLResponse(layout(base, "Sign in", body), status_code=status)


async def login_form(request: Request) -> Response:
    return _login_page(_base(request))


async def login(request: Request) -> Response:
    """Sign in with a key: master -> admin; a key with metadata role=admin -> admin; else its own page."""
    base = _base(request)
    try:
        secret = _secret()
    except Refused as r:
        return r.response
    from accounts.gateway import _current_master

    given = (await _form(request)).get("key", "").strip()
    if not given:
        return _login_page(base, "give a key", 400)
    if hmac.compare_digest(given.encode(), (_current_master() or "").encode()):
        s = sess.new_session("admin", "master")
    else:
        try:
            info = await current_accounts().call("key_info", given, None)
        except AccountsError:
            info = None
        if info is None or info.get("revoked_at") or _expired(info):
            return _login_page(base, "unknown, revoked or expired key", 401)
        role = "admin" if (info.get("metadata") or {}).get("role") == "admin" else "key"
        s = sess.new_session(role, info.get("key_alias") or info["key_id"], key_id=info["key_id"])
    return _with_session(RedirectResponse(f"{base}/{'keys' if s.admin else 'me'}", status_code=303), request, base,
                         s, secret)


# ------------------------------------------------------------------ single sign-on (OpenID Connect)
def _oidc_config() -> Any | None:
    ing = gateway_view.ingress()
    return ing.cfg.console.oidc if ing is not None else None


def _sso_refused(base: str, err: oidc.SSOError) -> HTMLResponse:
    return _login_page(base, f"single sign-on: {err}", err.status)


def _sso_setup(request: Request) -> tuple[str, Any, bytes]:
    """(console base path, the OIDC config, the session secret), or Refused (404 when SSO is off)."""
    cfg = _oidc_config()
    if cfg is None:
        raise Refused(PlainTextResponse("single sign-on is not configured (console.oidc)", status_code=404))
    return _base(request), cfg, _secret()


def _with_session(r: Response, request: Request, base: str, s: sess.Session, secret: bytes) -> Response:
    r.set_cookie(sess.COOKIE, sess.encode(s, secret), max_age=sess.TTL_S, path=base, httponly=True,
                 samesite="strict", secure=request.url.scheme == "https")
    return r


async def sso_start(request: Request) -> Response:
    """Send the browser to the issuer (authorization code + PKCE), the pending login in a cookie."""
    try:
        base, cfg, secret = _sso_setup(request)
        redirect_uri = cfg.redirect_uri or f"{request.url.scheme}://{request.url.netloc}{base}/sso/callback"
        url, pending = await oidc.client_for(cfg).start(redirect_uri)
    except Refused as r:
        return r.response
    except oidc.SSOError as err:
        return _sso_refused(_base(request), err)
    r = RedirectResponse(url, status_code=303)
    # Lax, not Strict: the issuer's redirect back is a cross-site navigation that must carry it
    r.set_cookie(oidc.PENDING_COOKIE, oidc.seal(pending, secret), max_age=oidc.PENDING_TTL_S, path=base,
                 httponly=True, samesite="lax", secure=request.url.scheme == "https")
    return r


async def sso_callback(request: Request) -> Response:
    """The issuer's redirect back: state checked, code redeemed, ID token verified, allow-list applied."""
    base = _base(request)
    try:
        base, cfg, secret = _sso_setup(request)
        pending = oidc.unseal(request.cookies.get(oidc.PENDING_COOKIE), secret)
        who = await oidc.client_for(cfg).finish(pending, dict(request.query_params))
        if not oidc.allowed(cfg, who):
            raise oidc.SSOError(f"{who.name or who.subject} is not on the console's admin allow-list", 403)
    except Refused as r:
        return r.response
    except (oidc.SSOError, ValueError) as err:
        r = _sso_refused(base, err if isinstance(err, oidc.SSOError) else oidc.SSOError(str(err)))
        r.delete_cookie(oidc.PENDING_COOKIE, path=base)
        return r
    s = sess.new_session("admin", f"sso:{who.name or who.subject}")
    # a page, not a redirect: the session cookie is SameSite=Strict, and a redirect chain that began
    # at the issuer is cross-site; this page's own navigation to the console is same-site
    target = f"{base}/keys"
    r = _with_session(HTMLResponse(f'<!doctype html><meta http-equiv="refresh" content="0;url={e(target)}">'
                                   f'<p>Signed in. <a href="{e(target)}">Continue</a></p>'), request, base, s, secret)
    r.delete_cookie(oidc.PENDING_COOKIE, path=base)
    return r


@page(admin=False, change=True)
async def logout(ctx: Ctx, form: dict[str, str]) -> Response:
    r = RedirectResponse(f"{ctx.base}/login", status_code=303)
    r.delete_cookie(sess.COOKIE, path=ctx.base)
    return r
