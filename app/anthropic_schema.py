"""The Anthropic Messages API's request bodies as pydantic models: the allow-list of fields.

Any field not declared here is a 400, as Anthropic answers, so no stray field reaches a
provider. app/anthropic_api.py translates these to an OpenAI chat body and back.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

class _Open(BaseModel):
    """Unknown fields inside blocks (cache_control, citations, ...) are accepted and ignored, as
    Anthropic adds them often; only the request's top level is closed (`MessagesBase`)."""

    model_config = ConfigDict(extra="allow")


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class ImageSource(_Open):
    type: Literal["base64", "url", "file"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(_Open):
    type: Literal["image"]
    source: ImageSource


class DocumentBlock(_Open):
    """A PDF or text document (source base64 / text / content / url / file)."""

    type: Literal["document"]
    source: dict[str, Any]
    title: str | None = None
    context: str | None = None


class SearchResultBlock(_Open):
    type: Literal["search_result"]
    source: str | None = None
    title: str | None = None
    content: list[TextBlock] = Field(default_factory=list)


class ToolReferenceBlock(_Open):
    type: Literal["tool_reference"]
    tool_name: str | None = None


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ResultPart = Annotated[Union[TextBlock, ImageBlock, DocumentBlock, SearchResultBlock, ToolReferenceBlock],
                       Field(discriminator="type")]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Open):
    """Earlier thinking: no OpenAI-format backend takes it back, so it is dropped."""

    type: Literal["thinking", "redacted_thinking"]


# blocks only Anthropic's own server tools produce; doka runs none of those tools
SERVER_BLOCKS = ("server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                 "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
                 "tool_search_tool_result", "container_upload", "mcp_tool_use", "mcp_tool_result")


class ServerBlock(_Open):
    type: Literal[SERVER_BLOCKS]  # type: ignore[valid-type]


Block = Annotated[Union[TextBlock, ImageBlock, DocumentBlock, SearchResultBlock, ToolUseBlock, ToolResultBlock,
                        ThinkingBlock, ServerBlock], Field(discriminator="type")]


class Message(_Open):
    """A turn; `system` turns (Claude Code sends one after the first user turn) join the system prompt."""

    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class Tool(_Open):
    """A custom (client) tool: name + input_schema; extra fields (cache_control, defer_loading,
    strict, input_examples, ...) are accepted and not sent on."""

    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Open):
    user_id: str | None = None


class Thinking(_Open):
    """`enabled` (budget_tokens), `adaptive`, `disabled`, `between_tools`; `display` and the rest ignored."""

    type: Literal["enabled", "adaptive", "disabled", "between_tools"]
    budget_tokens: int | None = None


class OutputFormat(_Open):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Open):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class MessagesBase(BaseModel):
    """The Messages API's top-level fields (stable and beta, anthropic SDK 2.12): any other is a
    400, as Anthropic answers, so no stray field (`api_base`, ...) ever reaches a provider.
    Fields doka cannot honour are accepted and ignored (README, "Anthropic Messages")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None  # the earlier beta name of output_config.format
    # accepted, not honoured: prompt caching, context editing, containers, MCP, tiers, ...
    cache_control: dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    container: Any = None
    mcp_servers: list[dict[str, Any]] | None = None
    compaction: Any = None
    diagnostics: Any = None
    inference_geo: str | None = None
    service_tier: str | None = None
    speed: str | None = None
    billing_policy: Any = None
    fallbacks: Any = None
    fallback_credit_token: Any = None
    thread: Any = None
    doka: Any = None  # doka's routing extension (cost weight, candidates)


class MessagesRequest(MessagesBase):
    """The body of `POST /v1/messages` (Anthropic's required fields are required here too)."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool | None = False
    metadata: Metadata | None = None


class CountTokensRequest(MessagesBase):
    """The body of `POST /v1/messages/count_tokens`: a Messages request without max_tokens."""
