"""Request bodies the gateway accepts, validated before any upstream call.

Only the fields the gateway itself relies on are typed; every other OpenAI parameter
(`temperature`, `tools`, `response_format`, ...) passes through untouched to the provider,
so a new OpenAI parameter works without a gateway release. Roles follow the OpenAI SDK's
`ChatCompletionMessageParam` union.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import OpenAIError, bad_request

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Role
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class _Common(_Open):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]


def validate_body(model: type[_Common], body: Any) -> _Common:
    """Validate a parsed JSON body; a failure becomes a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        if first["type"] == "missing":
            raise bad_request(f"Missing required parameter: '{loc}'", param=loc, code="missing_required_parameter") from None
        raise bad_request(f"Invalid value for '{loc}': {first['msg']}", param=loc, code="invalid_value") from None


def prompt_text(body: dict[str, Any], limit: int = 2000) -> str:
    """The text a router looks at: the last user message (or the prompt), truncated."""
    if "messages" in body:
        for m in reversed(body["messages"]):
            if m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, list):
                    c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
                return (c or "")[:limit]
        return ""
    p = body.get("prompt", "")
    return (p if isinstance(p, str) else " ".join(map(str, p)))[:limit]


__all__ = ["ChatCompletionRequest", "CompletionRequest", "OpenAIError", "validate_body", "prompt_text"]
