"""`/v1/chat/completions`: the request (messages, tools) and the response, whole and as streamed chunks."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from bitinglip.core import InvalidInput
from bitinglip.gateway.protocol.sampling import (
    MAX_LOGPROBS,
    NO_OUTPUT_LIMITS,
    OutputLimits,
    ResponseFormat,
    SamplingRequest,
    TopLogprob,
    Usage,
    check_logprob_work,
    check_range,
    structured_outputs,
)


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class FunctionCallIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    arguments: str  # a JSON text, as the model's answer gave it


class MessageToolCall(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A call an earlier assistant turn made, sent back in the history."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: the call it answers
    refusal: str | None = None  # an assistant turn that refused (the client sends back what it got)
    # An assistant turn's reasoning, sent back as it came: taken and left out of the prompt (a reasoning model's
    # template does not show earlier turns' reasoning).
    reasoning_content: str | None = None
    reasoning: str | None = None


class FunctionDefinition(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class Tool(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # OpenAI's: "none" turns a reasoning model's thinking off (its template's `enable_thinking`), any other on.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # vLLM's: variables for the model's chat template, such as `{"enable_thinking": false}`.
    chat_template_kwargs: dict[str, Any] | None = None

    def template_kwargs(self) -> dict[str, Any] | None:
        """What the chat template is given beside the messages and tools."""
        if self.reasoning_effort is None:
            return self.chat_template_kwargs
        return {"enable_thinking": self.reasoning_effort != "none", **(self.chat_template_kwargs or {})}

    def top_logprobs_asked(self) -> int | None:
        """How many alternatives per token to return; None for no logprobs at all."""
        if self.logprobs:
            top = self.top_logprobs or 0
            check_range("top_logprobs", top, 0, MAX_LOGPROBS)
            check_logprob_work(self.n, top, "top_logprobs")
            return top
        if self.top_logprobs:
            raise InvalidInput("`top_logprobs` needs `logprobs` set to true", param="top_logprobs")
        return None

    def asked_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def sampling_args(
        self, prompt_len: int, max_model_len: int, limits: OutputLimits = NO_OUTPUT_LIMITS, *, clamp: bool = False
    ) -> dict[str, Any]:
        top = self.top_logprobs_asked()
        args = self._sampling_args(self.asked_max_tokens(), prompt_len, max_model_len, "messages", limits, clamp=clamp)
        if top is not None:
            args["logprobs"] = top
        if (structured := structured_outputs(self.structured_outputs, self.response_format)) is not None:
            args["structured_outputs"] = structured
        return args


class ChatTokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(msgspec.Struct):
    content: list[ChatTokenLogprob] | None


class FunctionCallOut(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct):
    id: str
    function: FunctionCallOut
    type: Literal["function"] = "function"


class AssistantMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None
    # The model's reasoning before its answer, where its deployment names a `reasoning_parser` (DeepSeek's name).
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionResponse(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None


class DeltaFunction(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(msgspec.Struct, omit_defaults=True):
    """One fragment of a streamed call: OpenAI sends its id, type and name first, then its arguments in pieces."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction | None = None


class DeltaMessage(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(msgspec.Struct):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None
