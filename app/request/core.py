"""The gateway core: one request from its body to its answer, with no Ray in sight.

`GatewayCore.serve` is the request path of every model endpoint: read and validate the body,
authorize the key, plan (app/request/plan.py) -> run the tiers (run.py, cascade.py) -> answer
(respond.py) or stream (stream.py). Every way out after authorization (answer, error, client
cancel, timeout) goes through `ctx.settle`, which settles exactly once (context.py, ledger.py).

The Serve deployment (deployments/ingress.py) builds the backends, the router port, the accounts
and observability, and hands each HTTP request here; tests build the same core with fakes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse, Response

from accounts.estimate import prompt_tokens
from app import anthropic_api, capabilities
from app.config import DokaConfig
from app.errors import OpenAIError, unknown_model
from app.request import respond
from app.request.cascade import CascadeRunner
from app.request.catalog import Catalog
from app.request.context import RequestContext
from app.request.http import read_json, request_id_of
from app.request.ledger import Accounts, Ledger, NoAccounts
from app.request.plan import Planner, RouterPort
from app.request.run import Attempt, ChainRunner
from app.request.stream import ask_usage, stream_response
from app.request.tiers import Tiers
from app.schemas import check_params, prompt_text, validate_body


class GatewayCore:
    def __init__(self, cfg: DokaConfig, tiers: Tiers, caps: dict[str, dict], router: RouterPort,
                 accounts: Accounts | None = None, obs: Any = None, plimits: Any = None) -> None:
        """`tiers`: the backends by model name; `caps`: what each model can serve
        (app/capabilities.py); `router`: the router port; `accounts`: the key/quota seam
        (`NoAccounts` when keys are off); `obs`: observability.gateway.Observability;
        `plimits`: the provider-limit gate (None when no model has limits)."""
        self.cfg, self.tiers, self.router = cfg, tiers, router
        self.accounts = accounts if accounts is not None else NoAccounts()
        self.obs = obs
        self.plimits = plimits
        self.catalog = Catalog(cfg, set(tiers.backends), tiers.down, caps)
        self.planner = Planner(cfg, self.catalog, tiers, router, obs, plimits)
        self.runner = ChainRunner(tiers, caps, plimits, lambda model: router.report(model, False))
        self.cascades = CascadeRunner(self.runner, self.catalog.cascades, caps, obs.metrics)
        self.ledger = Ledger(cfg, self.accounts, obs, plimits)
        self.max_body = cfg.server.max_body_bytes
        self.interactive = 0  # client requests in `serve` now (the batch runner yields above a threshold)

    def context(self, request_id: str, kind: str, requested: str, stream: bool) -> RequestContext:
        return RequestContext(request_id, kind, requested, stream, self.ledger)

    async def serve(self, request: Any, kind: str, schema: type, body: dict | None = None,
                    dialect: Any = None) -> Response:
        """Answer one model request (see the module docstring); counts interactive requests.

        `request`: Starlette's (or a batch line's `batches.http.LineRequest`): headers, key,
        body when `body` is None. `body`: an OpenAI chat/completion body already translated by
        another endpoint. `dialect`: writes the answer and stream for that endpoint (default:
        OpenAI's as-is). `kind`: chat, completion or embedding (the backend method called).
        """
        if getattr(request, "batch_line", None) is not None:
            return await self._serve(request, kind, schema, body, dialect)
        self.interactive += 1
        try:
            return await self._serve(request, kind, schema, body, dialect)
        finally:
            self.interactive -= 1

    async def _serve(self, request: Any, kind: str, schema: type, body: dict | None, dialect: Any) -> Response:
        request_id = request_id_of(request)
        if body is None:
            body = await read_json(request, self.max_body)
        req = validate_body(schema, body)
        routing_ext = body.pop("doka", None)  # doka's own request extension: never sent upstream
        requested = req.model
        self.catalog.check(requested, kind)
        # only the endpoint's OpenAI parameters (and what the operator allowed) may reach a provider
        check_params(kind, schema, body, self.catalog.client_params.get(requested, ()))
        stream = bool(getattr(req, "stream", False))
        ctx = self.context(request_id, kind, requested, stream)
        strip_usage = stream and kind != "embedding" and ask_usage(body)
        prompt = prompt_text(body)  # once per request: routing and the trace store share it
        needs = capabilities.needs_of(body) if kind == "chat" else capabilities.Needs()
        weight = request.headers.get("x-doka-cost-weight")
        early = self.planner.route_early(requested, weight, routing_ext, prompt, needs)
        try:  # a cascade may call three models: hold enough for all of them
            ctx.grant = await self.accounts.authorize(request, requested, body, request_id,
                                                      calls=3 if self.catalog.cascading(requested) else 1)
        except BaseException:
            if early is not None:
                early.cancel()
            raise
        self.obs.start(request_id, requested, body, key_id=getattr(ctx.grant, "key_id", None), stream=stream,
                       prompt=prompt)
        try:
            att = await self._plan_and_run(ctx, body, prompt, weight, routing_ext, early, needs)
        except OpenAIError as e:
            e.headers.setdefault("x-doka-request-id", request_id)
            ctx.settle(e.status)
            raise
        except asyncio.CancelledError:  # client gone (disconnect, timeout): Serve cancelled us
            ctx.settle(499)
            raise
        except BaseException:
            ctx.settle(500)
            raise
        finally:
            if early is not None:
                early.cancel()  # no-op once the plan has its decision
        ctx.answered_by(att)
        if stream:
            model = att.model
            idle = self.tiers.stalls[model].idle if model in self.tiers.stalls else None
            return stream_response(ctx, att.result, dialect or respond.OpenAIDialect, strip_usage, idle,
                                   self.ledger.track)
        await ctx.settle_and_wait(200, att.result.get("usage"))
        return respond.answer(ctx, att.result, dialect)

    async def _plan_and_run(self, ctx: RequestContext, body: dict[str, Any], prompt: str, weight: str | None,
                            ext: Any, early: Any, needs: capabilities.Needs) -> Attempt:
        """Plan the tiers, then run the cascade or the chain they name."""
        plan = await self.planner.plan(ctx.requested, prompt, weight, ext, getattr(ctx.grant, "models", None),
                                       early, needs)
        ctx.decision = plan.decision
        if ctx.requested in self.catalog.cascades:
            return await self.cascades.run(ctx.kind, body, ctx.requested, plan.chain, ctx.stream, ctx.side,
                                           needs=needs)
        if plan.decision is not None and plan.decision.cascade:  # a novel prompt (`router.novel_cascade`)
            return await self.cascades.run(ctx.kind, body, plan.decision.cascade, plan.chain, ctx.stream, ctx.side,
                                           "auto:novel:", needs)
        return await self.runner.run(ctx.kind, body, plan.chain, plan.reason, stream=ctx.stream)

    async def count_tokens(self, request: Any) -> Response:
        """Anthropic's token count (doka's estimate: ~4 characters a token, as the accounts reserve).

        Needs a valid key like any model call and leaves a ledger row with no tokens charged.
        """
        request_id = request_id_of(request)
        req = anthropic_api.validate(anthropic_api.CountTokensRequest, await read_json(request, self.max_body))
        if req.model not in self.catalog.public_set:
            raise unknown_model(req.model, self.catalog.public)
        body = {"model": req.model, "messages": anthropic_api.chat_messages(req), "max_tokens": 1}
        ctx = self.context(request_id, "chat", req.model, False)
        ctx.grant = await self.accounts.authorize(request, req.model, body, request_id)
        ctx.reason = "count_tokens"
        await ctx.settle_and_wait(200)
        return JSONResponse({"input_tokens": prompt_tokens(body)}, headers={"x-doka-request-id": request_id})

    def pending(self) -> list[asyncio.Task]:
        """Ledger settlements still running (graceful shutdown waits for them)."""
        return self.ledger.pending()
