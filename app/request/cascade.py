"""A cascade (`cascades.<name>`): ask weak and verifier at once; their agreed answer, else the strong chain's.

How two answers "agree" and how an agreed answer is replayed as a stream live in
deployments/cascade.py; this module runs the calls and decides who answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app import capabilities
from app.config import CascadeConfig
from app.errors import OpenAIError, is_client_error_status
from app.request.run import Attempt, ChainRunner
from deployments.cascade import agree, replay


class CascadeRunner:
    def __init__(self, runner: ChainRunner, cascades: dict[str, CascadeConfig], caps: dict[str, dict],
                 metrics: Any) -> None:
        """`metrics.cascade(name, outcome)`: counts agreed / escalated / failed_check / incapable."""
        self.runner, self.cascades, self.caps, self.metrics = runner, cascades, caps, metrics

    async def run(self, kind: str, body: dict[str, Any], name: str, chain: list[str], stream: bool,
                  side: list[tuple[str, dict]], reason_prefix: str = "",
                  needs: capabilities.Needs | None = None) -> Attempt:
        """`reason_prefix` goes before the route reason (`auto:novel:` when auto sent a novel prompt here).
        When weak or verifier cannot serve the request (`needs`: tools, images, ...), the check is
        skipped and the strong chain answers (route reason `cascade:incapable=<model>:<need>`).

        Both are asked for a whole answer (a stream is replayed from the weak one once they
        agree). Every call that answered is added to `side` (the request context's), also when
        the client leaves, so whatever way the request ends charges it; a call still running
        then is cancelled.
        """
        spec = self.cascades[name]
        _, dropped = capabilities.split([spec.weak, spec.verifier], self.caps, needs or capabilities.Needs())
        if dropped:
            self.metrics.cascade(name, "incapable")
            return await self.runner.run(kind, body, chain,
                                         f"{reason_prefix}cascade:incapable={capabilities.describe(dropped)}",
                                         stream=stream)
        quiet = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        calls = {m: asyncio.ensure_future(self.runner.run(kind, quiet, [m], f"cascade:{name}"))
                 for m in (spec.weak, spec.verifier)}
        answers: dict[str, dict] = {}
        refused: OpenAIError | None = None
        try:
            await asyncio.wait(calls.values())
        finally:  # also when the client left: what answered is charged, the rest is stopped
            for m, call in calls.items():
                if not call.done() or call.cancelled():
                    call.cancel()
                elif call.exception() is None:
                    answers[m] = call.result().result
                    side.append((m, answers[m].get("usage") or {}))
                elif isinstance(err := call.exception(), OpenAIError) and is_client_error_status(err.status):
                    refused = err  # the request itself was refused (the chain run): no tier would take it
        if refused is not None:
            raise refused
        pair = (answers.get(spec.weak), answers.get(spec.verifier), spec.compare)
        # `program` parses both answers (~1.4 ms per 1k characters): off the event loop
        agreed = len(answers) == 2 and (await asyncio.to_thread(agree, *pair) if spec.compare == "program"
                                        else agree(*pair))
        if agreed:
            side[:] = [(m, u) for m, u in side if m != spec.weak]  # the weak call is the answer now
            result = answers[spec.weak]
            if stream:
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                it = replay(result, include_usage).__aiter__()
                result = (await it.__anext__(), it)
            self.metrics.cascade(name, "agreed")
            return Attempt(result, spec.weak, f"{reason_prefix}cascade:agreed", [spec.weak, spec.verifier], side,
                           answers[spec.weak].get("usage"))
        outcome = "escalated" if len(answers) == 2 else "failed_check"
        self.metrics.cascade(name, outcome)
        att = await self.runner.run(kind, body, chain, f"{reason_prefix}cascade:{outcome}", stream=stream)
        att.tried = [spec.weak, spec.verifier, *att.tried]
        att.side = side
        return att
