"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`): the request, the message, its events.

Unlike the OpenAI types, these are lenient: Anthropic's clients (Claude Code above all) send fields and beta
features a text model has no use for (`output_config`, `context_management`, `cache_control`, ...),
and refusing them would refuse the client. Unknown fields are ignored; the fields read are typed, so a wrong
type is still a 400 naming the field. Content blocks have one loose shape (`ContentBlock`) so that a block kind
a text model cannot take is refused by the codec with a message naming it, not by a decoding error.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ContentBlock(msgspec.Struct, kw_only=True):
    """Any content block: `text`, `tool_use`, `tool_result`, `thinking`, ... (the codec says which it takes)."""

    type: str
    text: str | None = None  # text
    id: str | None = None  # tool_use
    name: str | None = None  # tool_use
    input: Any = None  # tool_use: the call's arguments, an object
    tool_use_id: str | None = None  # tool_result: the call it answers
    content: str | list[ContentBlock] | None = None  # tool_result: a string or text blocks
    is_error: bool | None = None  # tool_result


class InputMessage(msgspec.Struct, kw_only=True):
    role: str  # "user", "assistant"; "system" is merged into the system prompt
    content: str | list[ContentBlock]


class ToolDefinition(msgspec.Struct, kw_only=True):
    """A custom tool (`input_schema`), or one of Anthropic's server tools (its `type` names it, e.g.
    `web_search_20250305`), which this server cannot run."""

    name: str
    type: str | None = None  # None or "custom": a custom tool
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  # type "tool"
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(msgspec.Struct, kw_only=True):
    type: str  # "enabled", "adaptive", "disabled"
    budget_tokens: int | None = None  # not enforced: the model's reasoning is bounded by max_tokens only


class MessagesInput(msgspec.Struct, kw_only=True):
    """What shapes the prompt: all `count_tokens` takes, and the start of every create request."""

    model: str | None = None
    messages: list[InputMessage]
    system: str | list[ContentBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    # A model that reasons: "disabled" turns its thinking off (its chat template's `enable_thinking`), "enabled"
    # or "adaptive" on; absent, it does as its template does by default.
    thinking: ThinkingConfig | None = None
    # Ollama's, as on every generation route: how long the model stays loaded after this request.
    keep_alive: float | str | None = None


class CountTokensRequest(MessagesInput):
    pass


class MessagesRequest(MessagesInput):
    max_tokens: int  # required, as Anthropic has it; more than the context has room for is clamped
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = None  # Anthropic's range: 0 to 1
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None  # accepted; nothing here reads it


class CountTokensResponse(msgspec.Struct, kw_only=True):
    input_tokens: int


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type"):
    """The model's reasoning. Its signature is empty: it signs nothing, and a thinking block sent back in a later
    turn is left out of the prompt."""

    thinking: str
    signature: str = ""


OutputBlock = ThinkingBlock | TextBlock | ToolUseBlock


class MessageUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0  # no prompt caching to report
    cache_read_input_tokens: int = 0


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageResponse(msgspec.Struct, kw_only=True):
    id: str
    model: str  # as the client named it (an alias stays the alias)
    content: list[OutputBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"


# -- the streamed events (each sent as `event: <type>` and `data: <json>`)


class MessageStartEvent(msgspec.Struct, tag="message_start", tag_field="type"):
    message: MessageResponse


class ContentBlockStartEvent(msgspec.Struct, tag="content_block_start", tag_field="type"):
    index: int
    content_block: OutputBlock


class TextDelta(msgspec.Struct, tag="text_delta", tag_field="type"):
    text: str


class InputJsonDelta(msgspec.Struct, tag="input_json_delta", tag_field="type"):
    partial_json: str


class ThinkingDelta(msgspec.Struct, tag="thinking_delta", tag_field="type"):
    thinking: str


class ContentBlockDeltaEvent(msgspec.Struct, tag="content_block_delta", tag_field="type"):
    index: int
    delta: TextDelta | InputJsonDelta | ThinkingDelta


class ContentBlockStopEvent(msgspec.Struct, tag="content_block_stop", tag_field="type"):
    index: int


class StopDelta(msgspec.Struct):
    stop_reason: StopReason | None
    stop_sequence: str | None


class DeltaUsage(msgspec.Struct):
    output_tokens: int


class MessageDeltaEvent(msgspec.Struct, tag="message_delta", tag_field="type"):
    delta: StopDelta
    usage: DeltaUsage


class MessageStopEvent(msgspec.Struct, tag="message_stop", tag_field="type"):
    pass


class PingEvent(msgspec.Struct, tag="ping", tag_field="type"):
    pass
