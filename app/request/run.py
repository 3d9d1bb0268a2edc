"""Running a chain: each tier in order with its own timeout; the first answer (or first chunk) wins.

A failed or timed-out tier moves on to the next; a client error (the request itself is wrong)
stops the chain, except a capability refusal another tier may not share. A stream may move on
only until its first chunk (`first_token_timeout_s` included); after that it is the stream
writer's (app/request/stream.py). Tiers that are down, used up at their provider limit, or full
are skipped without a call and named in the route reason; a request nowhere else can go waits
at the full tiers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from accounts import provider_gate
from app import capabilities
from app.errors import OpenAIError, UpstreamError, provider_limit_exceeded, tier_unavailable, upstream_exhausted
from app.request.tiers import Tiers
from deployments import stalls, tier_load

logger = logging.getLogger("ray.serve")


class Attempt:
    """What a chain run produced: the answer (or `(first chunk, iterator)` of an open stream),
    who answered, why, and every tier tried.

    `side`: (model, usage) of the other calls made for this answer (a cascade's weak and
    verifier), charged with it. `usage`: a stream's usage when known before it starts (a
    replayed answer), so the ledger has it even if the client asked for none or left early.
    `hold`: a stream's provider-limit hold (accounts.provider_gate), released when it settles."""

    __slots__ = ("result", "model", "reason", "tried", "side", "usage", "hold")

    def __init__(self, result: Any, model: str, reason: str, tried: list[str],
                 side: list[tuple[str, dict]] | None = None, usage: dict | None = None,
                 hold: str | None = None) -> None:
        self.result, self.model, self.reason, self.tried = result, model, reason, tried
        self.side = side if side is not None else []
        self.usage = usage
        self.hold = hold


def unwrap(e: BaseException) -> BaseException:
    """Ray wraps a deployment's exception; get the original (an UpstreamError, usually)."""
    return getattr(e, "cause", None) or e


class ChainRunner:
    def __init__(self, tiers: Tiers, caps: dict[str, dict], plimits: Any = None,
                 report_failure: Callable[[str], None] = lambda model: None) -> None:
        """`plimits`: the provider-limit gate (None: no model has limits); `report_failure`:
        tells the router a tier failed (its health-aware strategies cool it down)."""
        self.tiers, self.caps, self.plimits, self.report_failure = tiers, caps, plimits, report_failure

    async def run(self, kind: str, body: dict[str, Any], chain: list[str], base_reason: str,
                  stream: bool = False, load_aware: bool = True) -> Attempt:
        """The first tier of `chain` that answers, as an `Attempt`; an OpenAIError when none does."""
        tiers = self.tiers
        _, full = tiers.loads.split(chain) if load_aware else ([], [])
        queue_skipped: list[str] = []
        tried: list[str] = []
        last_error, timed_out, last_status = "no tier available", False, None
        retry_after: float | None = None  # set while the last failed tier is in its cooldown
        skipped: list[str] = []  # tiers not called: `model:provider_limit_rpd`, `model:down`, ...
        refusals: list[dict] = []
        missed_first: list[str] = []  # tiers left for their first-token timeout (route reason)
        down: dict[str, str] = {}  # tiers not serving now (deployments/tier_apps.py): skipped, no call
        for i, model in enumerate(chain):
            why = await tiers.why_down(model)
            if why is not None:
                skipped.append(f"{model}:down")
                down[model] = why
                continue
            backend = tiers.backends.get(model)
            tier_body = capabilities.for_model(body, self.caps.get(model)) if kind == "chat" else body
            hold: str | None = None
            if model in full:  # its vLLM queue is at the limit: a later tier answers sooner
                skipped.append(f"{model}:{tier_load.QUEUE_FULL}")
                queue_skipped.append(model)
                continue
            if backend is not None and self.plimits is not None and self.plimits.limited(model):
                got = await self.plimits.admit(model, tier_body)
                if isinstance(got, dict):  # used up: the next tier, before any call
                    skipped.append(f"{model}:provider_limit_{got['limit']}")
                    refusals.append(got)
                    continue
                hold = got
            tried.append(model)
            if backend is None:
                last_error, timed_out = f"{model}: not deployed", False
                continue
            timeout = tiers.timeouts[model]
            reason = (base_reason if i == 0 else stalls.fallback_reason(i + 1, missed_first)) + (
                f";skipped={','.join(skipped)}" if skipped else "")
            used = 0  # tokens the call used, for the provider-limit hold (0: failed, nothing charged)
            try:
                if stream:
                    it = getattr(backend, f"{kind}_stream")(model, tier_body, timeout).__aiter__()
                    try:
                        first = await stalls.first_chunk(it, model, tiers.stalls.get(model), timeout)
                    except BaseException:
                        await it.aclose()
                        raise
                    att, hold = Attempt((first, it), model, reason, tried, hold=hold), None  # the stream settles it
                    return att
                call = getattr(backend, kind)  # chat, completion or embedding
                result = await asyncio.wait_for(call(model, tier_body, timeout), timeout)
                used = provider_gate.tokens_of(result.get("usage") if isinstance(result, dict) else None)
                return Attempt(result, model, reason, tried)
            except StopAsyncIteration:
                return Attempt((None, None), model, reason, tried)
            except stalls.FirstTokenTimeout as e:
                last_error, timed_out = str(e), True
                missed_first.append(model)
            except asyncio.TimeoutError:
                last_error, timed_out = f"{model}: no answer within {timeout:g}s", True
            except asyncio.CancelledError:
                raise
            except Exception as e:  # one tier failed: note it, try the next
                err = unwrap(e)
                if isinstance(err, UpstreamError):
                    if (err.is_client_error and i + 1 < len(chain)
                            and capabilities.is_capability_refusal(err.status, err.message)):
                        # the model cannot do what was asked (no tool parser, too long): the next tier may
                        logger.info("ingress: tier %s refused for a capability reason: %s", model, err.message)
                        last_error, timed_out, last_status = f"{model}: {err.message}", False, err.status
                        continue
                    if err.is_client_error:
                        raise OpenAIError(err.status, err.message, headers={"x-doka-tiers-tried": ",".join(tried)}) from None
                    last_error, timed_out, last_status = f"{model}: {err}", err.timed_out, err.status
                    retry_after = getattr(err, "retry_after", None)
                else:
                    logger.warning("ingress: tier %s failed: %r", model, e)
                    last_error, timed_out, last_status = f"{model}: {type(err).__name__}: {err}", False, None
                    retry_after = None
            finally:  # every call made is counted once: its usage on an answer, 0 on error or cancel
                if hold is not None:
                    self.plimits.settle(hold, used)
            self.report_failure(model)
        if queue_skipped:  # no other tier answered: wait in the full queue after all
            return await self.run(kind, body, queue_skipped, f"{base_reason};queued="
                                  + ",".join(f"{m}:{tier_load.QUEUE_FULL}" for m in queue_skipped),
                                  stream, load_aware=False)
        if refusals and not tried:  # every tier used up: the client may come back at the reset
            raise provider_limit_exceeded(refusals, tried)
        if down and not tried:  # no tier to call: say which are down and why (Serve's message)
            raise tier_unavailable(down)
        if skipped:
            last_error += f" (skipped: {','.join(skipped)})"
        raise upstream_exhausted(tried, last_error, timed_out, last_status, retry_after)
