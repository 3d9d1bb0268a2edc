"""The one error type accounts raises, already in OpenAI's error shape.

The ingress turns it into a response with `to_response()`, so a missing key, a forbidden
model and an exhausted quota look exactly like OpenAI's own 401/403/429 answers.
"""

from __future__ import annotations

import math
from typing import Any


class AccountsError(Exception):
    """A refusal (401/403/429) or an outage of the accounts store (503)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    # ---- wire forms ----
    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def to_dict(self) -> dict[str, Any]:
        """Plain form that crosses the Ray actor boundary (custom exceptions do not travel well)."""
        return {
            "status": self.status,
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
            "retry_after": self.retry_after,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AccountsError":
        return cls(
            d["status"], d["message"], type=d["type"], code=d["code"], param=d.get("param"),
            retry_after=d.get("retry_after"),
        )

    def to_response(self):  # -> fastapi.responses.JSONResponse (imported lazily)
        from fastapi.responses import JSONResponse

        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())

    def __repr__(self) -> str:
        return f"AccountsError({self.status}, {self.code!r}, {self.message!r})"


# ---- constructors for each refusal, so the codes stay consistent ----
def unauthorized(message: str, code: str = "invalid_api_key") -> AccountsError:
    return AccountsError(401, message, type="invalid_request_error", code=code)


def forbidden(message: str, code: str = "model_not_allowed", param: str | None = "model") -> AccountsError:
    return AccountsError(403, message, type="permission_error", code=code, param=param)


def too_many(message: str, code: str, retry_after: float | None) -> AccountsError:
    return AccountsError(429, message, type="rate_limit_error", code=code, retry_after=retry_after)


def unavailable(message: str, retry_after: float | None = 1.0) -> AccountsError:
    return AccountsError(503, message, type="service_unavailable", code="accounts_unavailable", retry_after=retry_after)


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> AccountsError:
    return AccountsError(400, message, type="invalid_request_error", code=code, param=param)


def not_found(message: str, param: str | None = None) -> AccountsError:
    return AccountsError(404, message, type="invalid_request_error", code="not_found", param=param)


def ok(value: Any) -> dict[str, Any]:
    """A call's answer as it crosses the actor boundary: `{"ok": value}`."""
    return {"ok": value}


def err(e: AccountsError) -> dict[str, Any]:
    """A refusal as it crosses the actor boundary: `{"error": {...}}` (AccountsError.from_dict reads it)."""
    return {"error": e.to_dict()}
