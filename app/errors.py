"""Errors in OpenAI's JSON shape, so every OpenAI SDK raises its usual exception types.

`{"error": {"message", "type", "param", "code"}}` with the status an OpenAI client expects:
400 bad request, 401/403 auth, 404 unknown model, 413 body too large, 429 quota (or the last
provider rate-limited), 502/504 upstream exhausted, 503 the last provider overloaded. The same body goes into an SSE `data:` event when a stream fails after
its first chunk was sent.
"""

from __future__ import annotations

import math
import json
from typing import Any

from starlette.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class OpenAIError(Exception):
    """An error a client sees; raise it anywhere in the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "api_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, extra_headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(extra_headers or {})})

    def sse_event(self) -> bytes:
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


# upstream answers that refuse the request itself (not the tier): another tier would refuse it too
CLIENT_ERROR_STATUSES = (400, 404, 413, 422)


def is_client_error_status(status: int | None) -> bool:
    """The one rule for whose fault an upstream answer is: the request's (retrying, another tier or
    a cooldown would not help) or the provider's. Used by the egress and the ingress alike."""
    return status in CLIENT_ERROR_STATUSES


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_allowed(what: str, permitted: set[str]) -> OpenAIError:
    """403 for a key whose allow-list leaves nothing to call; `what` says what it lacks."""
    return OpenAIError(403, f"{what}; allowed: {', '.join(sorted(permitted))}", type="permission_error",
                       param="model", code="model_not_allowed")


def unknown_model(name: str, known: list[str]) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model {name!r} does not exist. Known models: {', '.join(known)}",
        param="model",
        code="model_not_found",
    )


def body_too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"Request body exceeds {limit} bytes", code="request_too_large")


# What a client is told when the last tier's provider said "slow down" rather than "broken":
# 429 stays 429 (rate limited: back off), 529 (Anthropic's "overloaded") becomes the standard
# 503; both with Retry-After. Anything else upstream (5xx, a provider rejecting the gateway's
# own credentials with 401/403) is the gateway's problem, not the client's: 502.
_BACKOFF = {429: (429, "upstream_rate_limited"), 529: (503, "upstream_overloaded")}


def upstream_exhausted(tiers: list[str], last_error: str, timed_out: bool,
                       last_status: int | None = None, retry_after: float | None = None) -> OpenAIError:
    """502 when every tier failed, 504 when the last one timed out, 429/503 when it said back off
    (see `_BACKOFF`), 503 with the seconds left when the last tier sits in its cooldown
    (`retry_after`); names the tiers tried."""
    headers = {"x-doka-tiers-tried": ",".join(tiers)}
    message = f"All upstream tiers failed (tried: {', '.join(tiers) or 'none'}); last error: {last_error}"
    if retry_after is not None and not timed_out:
        return OpenAIError(503, message, code="model_cooling_down",
                           headers={**headers, "retry-after": str(max(1, math.ceil(retry_after)))})
    if not timed_out and last_status in _BACKOFF:
        status, code = _BACKOFF[last_status]
        return OpenAIError(status, message, code=code, headers={**headers, "retry-after": "1"})
    status = 504 if timed_out else 502
    return OpenAIError(status, message, code="upstream_timeout" if timed_out else "upstream_exhausted",
                       headers=headers)


class UpstreamError(Exception):
    """One tier's failure (raised by the egress and model backends, caught by the ingress).

    Picklable across Ray: `status` is the provider's HTTP status (504 for a timeout).
    """

    def __init__(self, status: int, message: str, timed_out: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(status, message, timed_out, retry_after)
        self.status = status
        self.message = message
        self.timed_out = timed_out
        self.retry_after = retry_after  # seconds until the tier is called again (a cooldown)

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"

    @property
    def is_client_error(self) -> bool:
        """The request itself was refused: trying another tier would not help."""
        return is_client_error_status(self.status)


def tier_unavailable(down: dict[str, str]) -> OpenAIError:
    """503 when every tier a request could go to is down (a vLLM tier whose Serve application
    failed or is still starting, deployments/tier_apps.py): names each and Serve's reason."""
    what = "; ".join(f"{m}: {why}" for m, why in down.items())
    return OpenAIError(503, f"No tier of this request is serving now ({what})", code="model_unavailable",
                       headers={"x-doka-tiers-down": ",".join(down)})


def provider_limit_exceeded(refusals: list[dict[str, Any]], tiers: list[str]) -> OpenAIError:
    """429 when every model a request could go to has used up a provider limit
    (accounts.provider_limits): Retry-After is the soonest of their resets, so a client that
    waits that long finds one of them open again."""
    soonest = min(r["retry_after"] for r in refusals)
    what = ", ".join(f"{r['model']} {r['limit']} {r['used']}/{r['allowed']}" for r in refusals)
    hint = "retry after the window resets"
    too_big = [r for r in refusals if r.get("needed", 1) > r["allowed"]]
    if too_big:  # waiting does not help: the request's own worst case is over the limit
        r = too_big[0]
        hint = (f"this request may use up to {r['needed']} tokens, more than {r['model']}'s {r['limit']} "
                f"of {r['allowed']}: lower max_tokens")
    return OpenAIError(429, f"Provider limit reached ({what}); {hint}",
                       type="rate_limit_error", code="provider_limit_exceeded",
                       headers={"retry-after": str(max(1, math.ceil(soonest))),
                                "x-doka-tiers-tried": ",".join(tiers)})
