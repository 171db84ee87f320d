"""OpenAI wire types as msgspec structs, named as OpenAI and vLLM name them.

A request field BitingLip does not serve is refused (400 naming it), and every field it reads is typed, so a
wrong type is a 400 naming the field. Each request maps itself to the engine's sampling arguments
(`sampling_args`), checking every value on the way, so serving code never reads sampling fields one by one.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from bitinglip.core import InvalidInput

# The response shapes live in `responses`; re-exported so every wire type is `protocol.X`.
from bitinglip.gateway.responses import (
    AssistantMessage as AssistantMessage,
)
from bitinglip.gateway.responses import (
    ChatChoice as ChatChoice,
)
from bitinglip.gateway.responses import (
    ChatChunkChoice as ChatChunkChoice,
)
from bitinglip.gateway.responses import (
    ChatCompletionChunk as ChatCompletionChunk,
)
from bitinglip.gateway.responses import (
    ChatCompletionResponse as ChatCompletionResponse,
)
from bitinglip.gateway.responses import (
    ChatLogprobs as ChatLogprobs,
)
from bitinglip.gateway.responses import (
    ChatTokenLogprob as ChatTokenLogprob,
)
from bitinglip.gateway.responses import (
    CompletionChoice as CompletionChoice,
)
from bitinglip.gateway.responses import (
    CompletionLogprobs as CompletionLogprobs,
)
from bitinglip.gateway.responses import (
    CompletionResponse as CompletionResponse,
)
from bitinglip.gateway.responses import (
    DeltaFunction as DeltaFunction,
)
from bitinglip.gateway.responses import (
    DeltaMessage as DeltaMessage,
)
from bitinglip.gateway.responses import (
    DeltaToolCall as DeltaToolCall,
)
from bitinglip.gateway.responses import (
    Embedding as Embedding,
)
from bitinglip.gateway.responses import (
    EmbeddingResponse as EmbeddingResponse,
)
from bitinglip.gateway.responses import (
    EmbeddingUsage as EmbeddingUsage,
)
from bitinglip.gateway.responses import (
    FunctionCallOut as FunctionCallOut,
)
from bitinglip.gateway.responses import (
    ModelCapabilities as ModelCapabilities,
)
from bitinglip.gateway.responses import (
    ModelCard as ModelCard,
)
from bitinglip.gateway.responses import (
    ModelList as ModelList,
)
from bitinglip.gateway.responses import (
    ToolCallOut as ToolCallOut,
)
from bitinglip.gateway.responses import (
    TopLogprob as TopLogprob,
)
from bitinglip.gateway.responses import (
    Usage as Usage,
)

MAX_N = 128
MAX_LOGPROBS = 20
MAX_STOP = 16


def check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not (low <= value <= high):
        raise InvalidInput(f"`{name}` must be between {low:g} and {high:g}, got {value}", param=name)


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A request field BitingLip does not serve is refused (400 naming it), never accepted and dropped: a client
    that asks for tools or a setting we ignore would otherwise fail later, on an answer it did not ask for."""


class StreamOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


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


# vLLM's structured outputs (`extra_body={"structured_outputs": {...}}`): one constraint, and options.
CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")
STRUCTURED_OPTIONS = frozenset({"disable_any_whitespace", "disable_additional_properties", "whitespace_pattern"})


class JsonSchemaFormat(msgspec.Struct, kw_only=True):
    name: str = "response"
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, kw_only=True):
    """OpenAI's `response_format`: plain text, any JSON object, or JSON that validates against a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def structured_outputs(given: dict[str, Any] | None, response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The one constraint a request puts on its output, checked, as vLLM's StructuredOutputsParams takes it.

    JSON is kept free of filler whitespace unless the request says otherwise: a weak model can otherwise pad
    valid JSON with hundreds of blank characters until max_tokens."""
    if response_format is not None and response_format.type != "text":
        if given is not None:
            raise InvalidInput("send `response_format` or `structured_outputs`, not both", param="structured_outputs")
        if response_format.type == "json_object":
            given = {"json_object": True}
        elif response_format.json_schema is None or response_format.json_schema.schema is None:
            raise InvalidInput(
                "`response_format` of type json_schema needs `json_schema.schema`",
                param="response_format.json_schema.schema",
            )
        else:
            given = {"json": response_format.json_schema.schema}
    if given is None:
        return None
    for key in given:
        if key not in CONSTRAINTS and key not in STRUCTURED_OPTIONS:
            raise InvalidInput(
                f"`structured_outputs.{key}` is not supported; use one of {', '.join(CONSTRAINTS)}",
                param=f"structured_outputs.{key}",
            )
    kinds = [k for k in CONSTRAINTS if given.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise InvalidInput(
            f"`structured_outputs` takes exactly one of {', '.join(CONSTRAINTS)}, got {len(kinds)}",
            param="structured_outputs",
        )
    kind, value = kinds[0], given[kinds[0]]
    if kind == "choice" and not (isinstance(value, list) and value and all(isinstance(c, str) and c for c in value)):
        raise InvalidInput("`choice` must be a non-empty list of non-empty strings", param="structured_outputs.choice")
    if kind in ("regex", "grammar") and not (isinstance(value, str) and value):
        raise InvalidInput(f"`{kind}` must be a non-empty string", param=f"structured_outputs.{kind}")
    if kind == "json" and not isinstance(value, dict | str):
        raise InvalidInput("`json` must be a JSON schema (an object)", param="structured_outputs.json")
    if kind in ("json", "json_object") and not {"disable_any_whitespace", "whitespace_pattern"} & set(given):
        given = {**given, "disable_any_whitespace": True}
    return given


class _Sampling(_Request):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    priority: int = 0
    # Ollama's: how long the model stays loaded after this request (seconds, "5m", -1 forever).
    keep_alive: float | str | None = None
    # vLLM's: a constraint on the output (json, regex, choice, grammar, json_object), through `extra_body`.
    structured_outputs: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling_args(
        self, max_tokens: int | None, prompt_len: int, max_model_len: int, prompt_param: str
    ) -> dict[str, Any]:
        """The arguments every request shares, checked; a request's own `sampling_args` adds the rest."""
        check_range("temperature", self.temperature, 0.0, 2.0)
        check_range("top_p", self.top_p, 1e-9, 1.0)
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        check_range("n", self.n, 1, MAX_N)
        check_range("min_p", self.min_p, 0.0, 1.0)
        check_range("repetition_penalty", self.repetition_penalty, 1e-9, 2.0**31)
        if self.top_k is not None and self.top_k < -1:
            raise InvalidInput(f"`top_k` must be -1 (off) or at least 0, got {self.top_k}", param="top_k")
        if self.seed is not None and not (-(2**63) <= self.seed < 2**63):
            raise InvalidInput("`seed` must fit in a signed 64-bit integer", param="seed")
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stop) > MAX_STOP:
            raise InvalidInput(f"`stop` takes at most {MAX_STOP} sequences", param="stop")
        if any(not s for s in stop):
            raise InvalidInput("`stop` sequences must not be empty", param="stop")
        if prompt_len >= max_model_len:
            raise InvalidInput(
                f"This model's maximum context length is {max_model_len} tokens. However, your prompt is "
                f"{prompt_len} tokens, leaving no room for a completion. Please reduce the length of the prompt.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if max_tokens is not None:
            if max_tokens < 1:
                raise InvalidInput(
                    f"`max_tokens` must be at least 1 (0 only with `echo`, to score the prompt), got {max_tokens}",
                    param="max_tokens",
                )
            if prompt_len + max_tokens > max_model_len:
                raise InvalidInput(
                    f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                    f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
                    "completion). Please reduce the prompt or max_tokens.",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
        args: dict[str, Any] = {
            "n": self.n,
            "max_tokens": max_tokens if max_tokens is not None else max_model_len - prompt_len,
            "stop": stop or None,
            "ignore_eos": self.ignore_eos,
            "seed": self.seed,
        }
        optional = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "min_tokens": self.min_tokens,
        }
        args.update({k: v for k, v in optional.items() if v is not None})
        return args


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def top_logprobs_asked(self) -> int | None:
        """How many alternatives per token to return; None for no logprobs at all."""
        if self.logprobs:
            top = self.top_logprobs or 0
            check_range("top_logprobs", top, 0, MAX_LOGPROBS)
            return top
        if self.top_logprobs:
            raise InvalidInput("`top_logprobs` needs `logprobs` set to true", param="top_logprobs")
        return None

    def sampling_args(self, prompt_len: int, max_model_len: int) -> dict[str, Any]:
        top = self.top_logprobs_asked()
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        args = self._sampling_args(max_tokens, prompt_len, max_model_len, "messages")
        if top is not None:
            args["logprobs"] = top
        if (structured := structured_outputs(self.structured_outputs, self.response_format)) is not None:
            args["structured_outputs"] = structured
        return args


class CompletionRequest(_Sampling):
    # str, list of str, or list of token ids: msgspec cannot type a union of two list types; serving checks it.
    prompt: str | list[Any] | None = None
    logprobs: int | None = None
    echo: bool = False

    @property
    def score_only(self) -> bool:
        """`echo` with `max_tokens: 0`: the prompt scored (its logprobs), nothing generated, as evaluation
        harnesses ask for log-likelihoods."""
        return self.echo and self.max_tokens == 0

    def sampling_args(self, prompt_len: int, max_model_len: int) -> dict[str, Any]:
        check_range("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        max_tokens = self.max_tokens if self.max_tokens is not None else 16  # OpenAI's default for completions
        # The engine cannot generate nothing: scoring asks it for one token, which nobody sees or pays for.
        args = self._sampling_args(1 if self.score_only else max_tokens, prompt_len, max_model_len, "prompt")
        if self.logprobs is not None:
            args["logprobs"] = self.logprobs
            if self.echo:  # the prompt's tokens get theirs too (the first has none: nothing predicts it)
                args["prompt_logprobs"] = self.logprobs
        if (structured := structured_outputs(self.structured_outputs, None)) is not None:
            args["structured_outputs"] = structured
        return args


class TokenizeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /tokenize` as `vllm serve` takes it: a `prompt` (as /v1/completions tokenizes it) or `messages`
    (through the chat template, as /v1/chat/completions does), so `count` is the `prompt_tokens` a request gets."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None  # with messages: rendered into the prompt as a chat request's tools are
    return_token_strs: bool = False


class TokenizeResponse(msgspec.Struct, kw_only=True):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(msgspec.Struct, kw_only=True):
    prompt: str


class EmbeddingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/embeddings`: a string, a list of strings, token ids, or lists of token ids."""

    model: str | None = None
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    priority: int = 0
    keep_alive: float | str | None = None
