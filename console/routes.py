"""The console's routes (`console_router()`, included by the ingress under /console).

Thin shell: who is signed in (console/signin.py: sign-in, SSO, sessions, CSRF, the `page`
decorator), what to show (accounts core calls and accounts.console_queries), how it looks
(console.pages).
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from accounts.errors import AccountsError
from console import gateway_view, router_versions
from console.pages import bar_chart, e, hidden_csrf, money, table
from console.signin import PREFIX, Ctx, current_accounts, login, login_form, logout, page, sso_callback, sso_start

STATIC = {"console.css": "text/css; charset=utf-8"}
LIMIT_FIELDS = ("tokens_per_day", "tokens_per_month", "max_budget", "rpm_limit", "tpm_limit")


@page(admin=False)
async def home(ctx: Ctx) -> Response:
    return RedirectResponse(f"{ctx.base}/{'keys' if ctx.s.admin else 'me'}", status_code=303)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:  # allow-list: no path from the client reaches the filesystem
        return PlainTextResponse("not found", status_code=404)
    data = resources.files("console").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"cache-control": "max-age=300"})


# ------------------------------------------------------------------ keys
def _limits_form(ctx: Ctx, k: dict[str, Any]) -> str:
    inputs = "".join(f'<label>{f} <input type="number" step="any" min="0" name="{f}" value="{e(k.get(f))}" '
                     f'style="width:8em"></label>' for f in LIMIT_FIELDS)
    models = ",".join(k.get("models") or [])
    return (f'<details><summary>edit limits</summary><form method="post" class="inline limits" '
            f'action="{ctx.base}/keys/{e(k["key_id"])}/update">{hidden_csrf(ctx.csrf)}{inputs}'
            f'<label>models <input type="text" name="models" value="{e(models)}" placeholder="all"></label>'
            f'<button>Save</button></form></details>')


def _key_fields(form: dict[str, str], *, creating: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in ("key_alias", "team", "user"):
        if creating and form.get(f, "").strip():
            out[f] = form[f].strip()
    for f in LIMIT_FIELDS:
        if f in form:
            v = form[f].strip()
            if v == "":
                if not creating:
                    out[f] = None
                continue
            try:
                out[f] = float(v) if f == "max_budget" else int(v)
            except ValueError:
                raise AccountsError(400, f"{f} must be a number", type="invalid_request_error") from None
    if "models" in form:
        out["models"] = [m.strip() for m in form["models"].split(",") if m.strip()]
    if creating and form.get("admin") == "on":
        out["metadata"] = {"role": "admin"}
    return out


async def _keys_page(ctx: Ctx, revealed: dict[str, Any] | None = None, error: str | None = None) -> Response:
    q = ctx.request.query_params
    team, user = q.get("team") or None, q.get("user") or None
    keys = await current_accounts().call("list_keys", team=team, user=user, include_revoked=q.get("revoked") == "on",
                                  limit=500, offset=0)
    text = (q.get("q") or "").lower()
    if text:
        keys = [k for k in keys if text in " ".join(str(k.get(f) or "") for f in
                                                    ("key_id", "key_alias", "team", "user", "key_hint")).lower()]
    parts = []
    if error:
        parts.append(f'<p class="error">{e(error)}</p>')
    if revealed:
        parts.append(f'<div class="reveal" id="revealed">New key <b>{e(revealed.get("key_alias") or "")}</b>: '
                     f'<code id="new-key">{e(revealed["key"])}</code><br><span class="muted">Copy it now: it is '
                     f'shown once and never again.</span></div>')
    parts.append(
        f'<h2>Create a key</h2><form method="post" action="{ctx.base}/keys" class="inline card" id="create">'
        f'{hidden_csrf(ctx.csrf)}<input type="text" name="key_alias" placeholder="alias">'
        f'<input type="text" name="team" placeholder="team"><input type="text" name="user" placeholder="owner">'
        f'<input type="number" min="0" name="tokens_per_day" placeholder="tokens/day" style="width:8em">'
        f'<input type="number" min="0" step="any" name="max_budget" placeholder="budget USD" style="width:8em">'
        f'<input type="number" min="0" name="rpm_limit" placeholder="rpm" style="width:6em">'
        f'<input type="text" name="models" placeholder="models (comma list; empty: all)">'
        f'<label><input type="checkbox" name="admin"> console admin</label><button id="create-key">Create</button>'
        f'</form>')
    parts.append(
        f'<form method="get" action="{ctx.base}/keys" class="inline" id="search"><input type="text" name="q" '
        f'value="{e(q.get("q"))}" placeholder="search alias, id, owner"><input type="text" name="team" '
        f'value="{e(team)}" placeholder="team"><input type="text" name="user" value="{e(user)}" placeholder="owner">'
        f'<label><input type="checkbox" name="revoked" {"checked" if q.get("revoked") == "on" else ""}> revoked'
        f'</label><button>Search</button></form>')
    rows = []
    for k in keys:
        limits = ", ".join(f"{f}={k[f]}" for f in LIMIT_FIELDS if k.get(f) is not None) or "none"
        state = ('<span class="bad">revoked</span>' if k.get("revoked_at") else '<span class="ok">active</span>')
        actions = "" if k.get("revoked_at") else (
            _limits_form(ctx, k) + f'<form method="post" action="{ctx.base}/keys/{e(k["key_id"])}/revoke">'
            f'{hidden_csrf(ctx.csrf)}<button class="danger revoke">Revoke</button></form>')
        link = f'<a href="{ctx.base}/requests?key_id={quote(k["key_id"])}">{e(k["key_id"])}</a>'
        rows.append((link, k.get("key_alias"), k.get("key_hint"), k.get("team"), k.get("user"),
                     ",".join(k.get("models") or []) or "all", limits,
                     "admin" if (k.get("metadata") or {}).get("role") == "admin" else "", state, actions))
    parts.append(table(("key id", "alias", "hint", "team", "owner", "models", "limits", "role", "state", ""), rows,
                       raw_cols={0, 8, 9}, cls="keys"))
    return ctx.page("Keys", "".join(parts), "keys")


@page()
async def keys(ctx: Ctx) -> Response:
    return await _keys_page(ctx)


@page(change=True)
async def create_key(ctx: Ctx, form: dict[str, str]) -> Response:
    """Create a key; the answer page shows the plain key once (it is never stored)."""
    try:
        made = await current_accounts().call("generate_key", _key_fields(form, creating=True))
    except AccountsError as err:
        return await _keys_page(ctx, error=err.message)
    return await _keys_page(ctx, revealed=made)


@page(change=True)
async def update_key(ctx: Ctx, form: dict[str, str]) -> Response:
    try:
        await current_accounts().call("update_key", None, ctx.request.path_params["key_id"],
                               _key_fields(form, creating=False))
    except AccountsError as err:
        return await _keys_page(ctx, error=err.message)
    return RedirectResponse(f"{ctx.base}/keys", status_code=303)


@page(change=True)
async def revoke_key(ctx: Ctx, form: dict[str, str]) -> Response:
    await current_accounts().call("delete_key", [], [ctx.request.path_params["key_id"]])
    return RedirectResponse(f"{ctx.base}/keys", status_code=303)


# ------------------------------------------------------------------ spend
def _spend_args(ctx: Ctx) -> dict[str, Any]:
    q = ctx.request.query_params
    return {"start": q.get("start") or None, "end": q.get("end") or None}


@page()
async def spend(ctx: Ctx) -> Response:
    args, acc = _spend_args(ctx), current_accounts()
    groups = ("team", "key", "model", "day")  # four aggregates over the rollup, read side by side
    found = await asyncio.gather(*(acc.call("console_query", "spend", group_by=g, **args) for g in groups))
    by = dict(zip(groups, found))
    days = by["day"][-90:]
    charts = (bar_chart([(d["group"], d["cost_usd"]) for d in days], title="USD per day", unit=" USD")
              + bar_chart([(d["group"], d["total_tokens"]) for d in days], title="Tokens per day"))
    parts = [f'<form method="get" class="inline" action="{ctx.base}/spend"><label>from <input type="text" '
             f'name="start" placeholder="YYYY-MM-DD" value="{e(args["start"])}"></label><label>to <input type="text" '
             f'name="end" placeholder="YYYY-MM-DD" value="{e(args["end"])}"></label><button>Show</button></form>',
             f'<div class="charts">{charts}</div>']
    for group in ("team", "key", "model", "day"):
        link = f'{ctx.base}/spend.csv?group_by={group}' + "".join(f"&{k}={quote(v)}" for k, v in args.items() if v)
        parts.append(f'<h2>By {group} <a class="muted" href="{link}">CSV</a></h2>')
        parts.append(table((group, "requests", "prompt tokens", "completion tokens", "tokens", "USD"),
                           [(r["group"] or "(none)", r["requests"], r["prompt_tokens"], r["completion_tokens"],
                             r["total_tokens"], money(r["cost_usd"])) for r in by[group]], cls=f"spend-{group}"))
    return ctx.page("Spend", "".join(parts), "spend")


@page()
async def spend_csv(ctx: Ctx) -> Response:
    group = ctx.request.query_params.get("group_by", "day")
    if group not in ("key", "team", "model", "day"):
        return PlainTextResponse("group_by is one of key, team, model, day", status_code=400)
    rows = await current_accounts().call("console_query", "spend", group_by=group, limit=100_000, **_spend_args(ctx))
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([group, "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"])
    for r in rows:
        w.writerow([r["group"], r["requests"], r["prompt_tokens"], r["completion_tokens"], r["total_tokens"],
                    f'{r["cost_usd"]:.8f}'])
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"content-disposition": f'attachment; filename="doka-spend-{group}.csv"'})


# ------------------------------------------------------------------ requests
def _requests_table(ctx: Ctx, rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        rid = r.get("request_id") or ""
        link = f'<a href="{ctx.base}/requests/{quote(rid)}">{e(rid[:18])}</a>' if ctx.s.admin and rid else e(rid[:18])
        status = f'<span class="{"ok" if r["status"] < 400 else "bad"}">{r["status"]}</span>'
        out.append((link, r["created_at"], r.get("key_id"), r.get("model_requested"), r.get("model"),
                    r.get("route_reason"), f'{r["latency_ms"]:.0f} ms' if r.get("latency_ms") is not None else "",
                    r["prompt_tokens"] + r["completion_tokens"], money(r["cost_usd"]), status))
    return table(("request", "time (UTC)", "key", "model asked", "model answered", "route reason", "latency",
                  "tokens", "cost", "status"), out, raw_cols={0, 9}, cls="requests")


@page()
async def requests_page(ctx: Ctx) -> Response:
    q = ctx.request.query_params
    rows = await current_accounts().call("console_query", "recent_requests", key_id=q.get("key_id") or None,
                                  model=q.get("model") or None, errors_only=q.get("errors") == "on", limit=200)
    form = (f'<form method="get" class="inline" action="{ctx.base}/requests"><input type="text" name="key_id" '
            f'placeholder="key id" value="{e(q.get("key_id"))}"><input type="text" name="model" placeholder="model '
            f'answered" value="{e(q.get("model"))}"><label><input type="checkbox" name="errors" '
            f'{"checked" if q.get("errors") == "on" else ""}> errors only</label><button>Filter</button></form>')
    return ctx.page("Requests", form + _requests_table(ctx, rows), "requests")


@page()
async def request_detail(ctx: Ctx) -> Response:
    rid = ctx.request.path_params["request_id"]
    rows = await current_accounts().call("console_query", "request_rows", request_id=rid)
    if not rows:
        return ctx.page("Request", f'<p class="error">no ledger row for request {e(rid)}</p>', "requests", 404)
    steps = "".join(
        f'<div class="card"><b>{e(r["model"])}</b> (asked {e(r["model_requested"])}) · status {r["status"]} · '
        f'{r["latency_ms"] or 0:.0f} ms · {r["prompt_tokens"]}+{r["completion_tokens"]} tokens · '
        f'{money(r["cost_usd"])} · {"stream" if r["stream"] else "non-stream"} · {e(r["created_at"])}<br>'
        f'route reason: <code>{e(r["route_reason"])}</code> · key <code>{e(r["key_id"])}</code></div>'
        for r in rows)
    return ctx.page(f"Request {rid}", steps, "requests")


# ------------------------------------------------------------------ models and routing
def _no_ingress(ctx: Ctx, title: str, active: str) -> Response:
    return ctx.page(title, '<p class="error">not running inside a gateway replica</p>', active, 503)


@page()
async def models_page(ctx: Ctx) -> Response:
    ing = gateway_view.ingress()
    if ing is None:
        return _no_ingress(ctx, "Models", "models")
    rows = []
    for m in gateway_view.models(ing, await gateway_view.provider_allowance(ing)):
        health = (f'<span class="bad">down: {e(m["down"])}</span>' if m["down"] else
                  '<span class="bad">cooling down</span>' if m["cooling_down"] else
                  '<span class="bad">queue full</span>' if (m["load"] or {}).get("full") else
                  '<span class="ok">ok</span>' if m["served"] else '<span class="muted">not served here</span>')
        last = "" if m["last_failure_s_ago"] is None else f'{m["last_failure_s_ago"]:.0f} s ago'
        rows.append((m["model"], m["provider"], m["tier"], m["mode"], "yes" if m["auto_candidate"] else "",
                     f'${m["input_usd_per_mtok"]:.3g} / ${m["output_usd_per_mtok"]:.3g}', f'{m["timeout_s"]:g} s',
                     " → ".join(m["chain"]), health, last, gateway_view.load_text(m), gateway_view.limits_text(m)))
    status = await gateway_view.router_status(ing)
    body = (table(("model", "provider", "tier", "mode", "auto", "USD per 1M in/out", "timeout", "fallback chain",
                   "health", "last failure", "local queue", "provider limits"), rows, raw_cols={8}, cls="models")
            + "<h2>Router</h2>" + table(("field", "value"), sorted(status.items()), cls="router"))
    return ctx.page("Models", body, "models")


@page()
async def routing_page(ctx: Ctx) -> Response:
    return await _routing(ctx)


async def _routing(ctx: Ctx, note: str | None = None, error: str | None = None, code: int = 200) -> Response:
    ing = gateway_view.ingress()
    if ing is None:
        return _no_ingress(ctx, "Routing", "routing")
    q = ctx.request.query_params
    start = q.get("start") or (datetime.now(timezone.utc) - timedelta(days=13)).strftime("%Y-%m-%d")
    got = await current_accounts().call("console_query", "auto_decisions", start=start)
    rows = got["by_day_model"]
    total = sum(r["requests"] for r in rows) or 1
    share: dict[str, list[float]] = {}
    for r in rows:
        acc = share.setdefault(r["model"] or "(none)", [0, 0, 0, 0.0])
        acc[0] += r["requests"]; acc[1] += r["prompt_tokens"]; acc[2] += r["completion_tokens"]; acc[3] += r["cost_usd"]
    strong = gateway_view.strongest(ing)
    actual = sum(v[3] for v in share.values())
    if strong:
        all_strong = sum(v[1] for v in share.values()) * strong[1] + sum(v[2] for v in share.values()) * strong[2]
        saved = (f'<div class="card" id="saving">auto spent <b>{money(actual)}</b>; sending the same tokens to the '
                 f'strongest candidate <b>{e(strong[0])}</b> would have cost <b>{money(all_strong)}</b>'
                 + (f' (<b>{100 * (1 - actual / all_strong):.1f}%</b> saved)' if all_strong > 0 else "") + "</div>")
    else:
        saved = ""
    per_day: dict[str, int] = {}
    for r in rows:
        per_day[r["day"]] = per_day.get(r["day"], 0) + r["requests"]
    status = await gateway_view.router_status(ing)
    body = (f'<form method="get" class="inline" action="{ctx.base}/routing"><label>since <input type="text" '
            f'name="start" value="{e(start)}"></label><button>Show</button></form>{saved}'
            + '<div class="charts">' + bar_chart(sorted(per_day.items()), title="auto requests per day")
            + bar_chart([(m, v[0]) for m, v in sorted(share.items())], title="auto requests per model") + "</div>"
            + "<h2>Share per model</h2>"
            + table(("model", "requests", "share", "tokens", "USD"),
                    [(m, v[0], f"{100 * v[0] / total:.1f}%", v[1] + v[2], money(v[3]))
                     for m, v in sorted(share.items(), key=lambda kv: -kv[1][0])], cls="share")
            + "<h2>Route reasons</h2>" + table(("reason", "requests"), [(r["reason"], r["requests"])
                                                                       for r in got["reasons"]], cls="reasons")
            + "<h2>Live router</h2>" + table(("field", "value"), sorted(status.items()), cls="router")
            + await _versions_section(ctx, ing, status.get("artifact_version")))
    flash = (f'<p class="error" id="flash">{e(error)}</p>' if error else
             f'<p class="ok" id="flash">{e(note)}</p>' if note else "")
    return ctx.page("Routing", flash + body, "routing", code)


async def _versions_section(ctx: Ctx, ing: Any, live: str | None) -> str:
    """The registry's versions side by side, a promote button on each, and a roll-back to the one before."""
    registry = ing.cfg.router.registry
    if not registry:
        return '<h2>Router versions</h2><p class="muted">no registry configured (router.registry)</p>'
    try:
        rows, back = await asyncio.gather(asyncio.to_thread(router_versions.versions, registry, live),
                                          asyncio.to_thread(router_versions.rollback_target, registry, live))
    except Exception as err:  # an unreachable registry is shown, not a 500
        return f'<h2>Router versions</h2><p class="error">registry {e(registry)}: {e(err)}</p>'

    def button(version: str, label: str, ident: str) -> str:
        return (f'<form method="post" class="inline" action="{ctx.base}/routing/promote">{hidden_csrf(ctx.csrf)}'
                f'<input type="hidden" name="version" value="{e(version)}"><button id="{e(ident)}">{e(label)}</button>'
                "</form>")

    table_rows = [(r["version"], "live" if r["live"] else "", "latest" if r["latest"] else "", r["family"],
                   r["created"], r["featurizer"], r["training_rows"], r["metrics"],
                   "" if r["live"] else button(r["version"], "Promote", f"promote-{r['version']}"))
                  for r in rows]
    rollback = (f'<p>{button(back, f"Roll back to {back}", "rollback")}</p>' if back else "")
    return ("<h2>Router versions</h2>" + rollback
            + table(("version", "live", "latest", "family", "created", "featurizer", "training rows",
                     "evaluation", ""), table_rows, raw_cols={8}, cls="versions"))


@page(change=True)
async def promote_version(ctx: Ctx, form: dict[str, str]) -> Response:
    """Pin the live router to a registry version (promote, or roll back to an earlier one)."""
    ing = gateway_view.ingress()
    if ing is None:
        return _no_ingress(ctx, "Routing", "routing")
    version = form.get("version", "")
    try:
        done = await asyncio.to_thread(router_versions.promote, ing.cfg, version)
    except router_versions.PromoteRefused as err:
        return await _routing(ctx, error=str(err), code=err.status)
    return await _routing(ctx, note=f"router pinned to {done['version']} (through {done['via']} reconfigure); "
                                    "replicas load it in place")


# ------------------------------------------------------------------ a key's own page
@page(admin=False)
async def me(ctx: Ctx) -> Response:
    if ctx.s.key_id is None:
        return RedirectResponse(f"{ctx.base}/keys", status_code=303)
    acc = current_accounts()
    info = await acc.call("key_info", None, ctx.s.key_id)
    usage = info.get("usage") or {}
    card = table(("field", "value"), [(k, info.get(k)) for k in
                                      ("key_id", "key_alias", "key_hint", "team", "user", "models", *LIMIT_FIELDS,
                                       "budget_period", "expires_at")]
                 + [(f"usage: {k}", v) for k, v in usage.items()], cls="me")
    days = await acc.call("console_query", "spend", group_by="day", key_id=ctx.s.key_id)
    rows = await acc.call("console_query", "recent_requests", key_id=ctx.s.key_id, limit=50)
    body = (card + bar_chart([(d["group"], d["cost_usd"]) for d in days[-90:]], title="USD per day", unit=" USD")
            + "<h2>Recent requests</h2>" + _requests_table(ctx, rows))
    return ctx.page("My key", body, "me")


def console_router() -> APIRouter:
    """The console's routes; they find this replica's accounts and master key at request time."""
    r = APIRouter(prefix=PREFIX, include_in_schema=False)
    r.add_api_route("", home, methods=["GET"])
    r.add_api_route("/", home, methods=["GET"])
    r.add_api_route("/login", login_form, methods=["GET"])
    r.add_api_route("/login", login, methods=["POST"])
    r.add_api_route("/logout", logout, methods=["POST"])
    r.add_api_route("/sso/start", sso_start, methods=["GET"])
    r.add_api_route("/sso/callback", sso_callback, methods=["GET"])
    r.add_api_route("/static/{name}", static, methods=["GET"])
    r.add_api_route("/keys", keys, methods=["GET"])
    r.add_api_route("/keys", create_key, methods=["POST"])
    r.add_api_route("/keys/{key_id}/update", update_key, methods=["POST"])
    r.add_api_route("/keys/{key_id}/revoke", revoke_key, methods=["POST"])
    r.add_api_route("/spend", spend, methods=["GET"])
    r.add_api_route("/spend.csv", spend_csv, methods=["GET"])
    r.add_api_route("/requests", requests_page, methods=["GET"])
    r.add_api_route("/requests/{request_id}", request_detail, methods=["GET"])
    r.add_api_route("/models", models_page, methods=["GET"])
    r.add_api_route("/routing", routing_page, methods=["GET"])
    r.add_api_route("/routing/promote", promote_version, methods=["POST"])
    r.add_api_route("/me", me, methods=["GET"])
    return r
