"""Request bodies the gateway accepts, validated before any upstream call.

Only the fields the gateway itself relies on are typed here. Which other fields a body may
carry is an allow-list of the endpoint's OpenAI parameters, taken from the installed openai
SDK (app/request_params.py: `tools`, `response_format`, `seed`, ... pass through to the
provider, a new OpenAI parameter arrives with an SDK upgrade); any other field is a 400
(`check_params`). Roles follow the OpenAI SDK's `ChatCompletionMessageParam` union.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class EmbeddingRequest(_Open):
    """`POST /v1/embeddings`: OpenAI's fields; `dimensions` and others pass through to the provider."""

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
    stream: Literal[False] | None = None  # embeddings never stream: `true` is a 400, not a 502

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must not be empty")
        return value


def validate_body(model: type[BaseModel], body: Any, deepest: bool = False) -> Any:
    """Validate a parsed JSON body; a failure becomes a 400 naming the first bad field.

    `deepest`: name the deepest error instead (a `str | list[item]` field fails once per union
    branch, and the list branch's error is the one that says which item is wrong).
    """
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = e.errors()
        first = max(errors, key=lambda err: len(err["loc"])) if deepest else errors[0]
        loc = ".".join(str(x) for x in first["loc"] if not (deepest and isinstance(x, str) and ("[" in x or x == "str")))
        if first["type"] == "missing":
            raise bad_request(f"Missing required parameter: '{loc}'", param=loc, code="missing_required_parameter") from None
        raise bad_request(f"Invalid value for '{loc}': {first['msg']}", param=loc, code="invalid_value") from None


def check_params(kind: str, model: type[BaseModel], body: dict[str, Any], extra: Any = ()) -> None:
    """400 naming every top-level field of `body` that `kind`'s OpenAI API (or `model`'s own
    fields, or the operator's `extra` for the requested model) does not define."""
    from app.request_params import refuse_unknown

    refuse_unknown(kind, body, (*model.model_fields, *extra))


PROMPT_TEXT_LIMIT = 2000


def first_choice_delta(chunk: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """An OpenAI stream chunk's first choice as (text, tool-call deltas, finish reason).

    What every dialect that rewrites a chat stream (/v1/messages, /v1/responses) reads of a chunk;
    other choices (`n` > 1) are not theirs to translate.
    """
    for choice in chunk.get("choices") or []:
        if choice.get("index", 0) == 0:
            delta = choice.get("delta") or {}
            return delta.get("content"), delta.get("tool_calls") or [], choice.get("finish_reason")
    return None, [], None


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: only the text ones carry words
        return " ".join(p.get("text") or "" for p in content
                        if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


def prompt_text(body: dict[str, Any], limit: int = PROMPT_TEXT_LIMIT) -> str:
    """The one text a request is routed on, recorded as, and trained on: the last user message
    (or the completion prompt), truncated to `limit` characters.

    The router featurizes it at serve time, the trace store records it and `doka
    train-from-traces` learns from what was recorded, so train and serve see the same text
    (a system prompt or earlier turns never shift a request's features). Computed once per
    request by the ingress.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return _content_text(m.get("content"))[:limit]
        return ""
    p = body.get("prompt", body.get("input", ""))  # completions, or embeddings
    if isinstance(p, str):
        return p[:limit]
    return " ".join(map(str, p))[:limit] if isinstance(p, list) else ""


__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "OpenAIError", "validate_body", "check_params", "prompt_text"]
