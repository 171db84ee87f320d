"""`/v1/responses`: OpenAI's Responses API, the request, its input items and the response object.

Lenient as the agents that use it need (Codex sends `client_metadata`, `prompt_cache_key`, `include`, ...): the
request accepts fields it does not know, and its input items are read one by one (`input_item`) so that a bad one
is refused naming its place (`input.3.call_id`), and a message item may come without its `type`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from bitinglip.core import InvalidInput, validation_path


class InputContentPart(msgspec.Struct, kw_only=True):
    """A message's content part: `input_text`, `output_text` (an assistant turn sent back), `refusal`, ..."""

    type: str
    text: str | None = None
    refusal: str | None = None


class MessageItem(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[InputContentPart]
    type: Literal["message"] = "message"
    id: str | None = None
    status: str | None = None


class FunctionCallItem(msgspec.Struct, kw_only=True):
    """A call an earlier turn made (the model's `function_call` output, sent back)."""

    call_id: str
    name: str
    arguments: str
    type: Literal["function_call"] = "function_call"
    id: str | None = None
    namespace: str | None = None  # the call of a function in a `namespace` tool
    status: str | None = None


class FunctionCallOutputItem(msgspec.Struct, kw_only=True):
    """What the client's function returned for a call."""

    call_id: str
    output: str | list[InputContentPart]
    type: Literal["function_call_output"] = "function_call_output"
    id: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem

# Items an earlier turn made that the model's prompt leaves out: reasoning (encrypted or summarised, of another
# model), and the calls of hosted tools this server never runs.
SKIPPED_ITEMS = frozenset(
    {
        "reasoning",
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "computer_call",
        "computer_call_output",
        "mcp_list_tools",
        "mcp_call",
        "mcp_approval_request",
        "mcp_approval_response",
    }
)
_ITEM_TYPES: dict[str, type[InputItem]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


def input_item(raw: Any, param: str) -> InputItem | None:
    """One input item checked (None: an item the prompt leaves out, such as `reasoning`)."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"`{param}` must be an object (an input item)", param=param)
    kind = raw.get("type", "message")  # OpenAI takes a message without its type ("easy input message")
    if kind in SKIPPED_ITEMS:
        return None
    item_type = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if item_type is None:
        known = sorted({*_ITEM_TYPES, *SKIPPED_ITEMS})
        raise InvalidInput(
            f"`{param}.type` {kind!r} is not an input item this server takes; one of {', '.join(known)}",
            param=f"{param}.type",
        )
    try:
        return msgspec.convert(raw, item_type)
    except msgspec.ValidationError as exc:
        raise bad_value(exc, param) from exc


def bad_value(exc: msgspec.ValidationError, param: str) -> InvalidInput:
    """The error for a bad part of the request at ``param``, naming the field (a missing one too)."""
    where, message = validation_path(str(exc))
    missing = re.match(r"Object missing required field `(\w+)`", message)
    if missing:
        where = f"{where}.{missing[1]}" if where else missing[1]
    field = f"{param}.{where}" if where else param
    return InvalidInput(f"invalid value: {message} - at `{field}`", param=field)


class FunctionTool(msgspec.Struct, kw_only=True):
    name: str
    type: Literal["function"] = "function"
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamespaceTool(msgspec.Struct, kw_only=True):
    """A named group of functions (Codex sends its sub-agent tools so)."""

    name: str
    tools: list[dict[str, Any]]
    type: Literal["namespace"] = "namespace"
    description: str | None = None


class TextFormat(msgspec.Struct, kw_only=True):
    """`text.format`: `text`, `json_object`, or `json_schema` with its name, schema and strictness inline."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/responses`. Fields OpenAI defines that change nothing here (`include`, `prompt_cache_key`,
    `truncation`, `service_tier`, `reasoning`, ...) are taken and echoed; unknown fields are accepted."""

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    truncation: str | None = None
    service_tier: str | None = None
    background: bool | None = None
    safety_identifier: str | None = None
    max_tool_calls: int | None = None
    # vLLM's sampling extensions, as its own /v1/responses takes them.
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    stop: str | list[str] | None = None
    # Ollama's: how long the model stays loaded after this request.
    keep_alive: float | str | None = None


# -- the response


class OutputText(msgspec.Struct, kw_only=True):
    text: str
    type: Literal["output_text"] = "output_text"
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


# Output items are tagged by their `type` (sent first), as OpenAI's are.
class OutputMessage(msgspec.Struct, kw_only=True, tag_field="type", tag="message"):
    id: str
    status: str  # in_progress, completed, incomplete
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"


class OutputFunctionCall(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str
    namespace: str | None = None  # a function of a `namespace` tool: `name` is its own name within it


class ReasoningText(msgspec.Struct, kw_only=True):
    text: str
    type: Literal["reasoning_text"] = "reasoning_text"


class OutputReasoning(msgspec.Struct, kw_only=True, tag_field="type", tag="reasoning"):
    """The model's reasoning, in full (`content`; no summary is made, and nothing is encrypted)."""

    id: str
    status: str  # in_progress, completed, incomplete
    content: list[ReasoningText]
    summary: list[Any] = msgspec.field(default_factory=list)


OutputItem = OutputReasoning | OutputMessage | OutputFunctionCall


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class IncompleteDetails(msgspec.Struct):
    reason: str


class ResponseError(msgspec.Struct):
    code: str
    message: str


class ResponseObject(msgspec.Struct, kw_only=True):
    """The response, whole: what `POST /v1/responses` answers, and what a stream's last event carries."""

    id: str
    created_at: int
    model: str
    status: str  # in_progress, completed, incomplete, failed
    output: list[OutputItem]
    object: Literal["response"] = "response"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    background: bool = False
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    completed_at: int | None = None


class ResponseDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(msgspec.Struct, kw_only=True):
    """`GET /v1/responses/{id}/input_items`: a page of the items the request sent, as OpenAI lists them."""

    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class StreamEvent(msgspec.Struct, kw_only=True):
    """One of a streamed response's events, for the OpenAPI document: `type` names it (and its `event:` line),
    `sequence_number` counts from 0; the rest is the event's own (OpenAI's shapes)."""

    type: str
    sequence_number: int
