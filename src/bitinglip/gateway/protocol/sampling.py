"""Sampling parameters every generation request shares, checked and mapped to the engine's arguments; the
usage and logprob shapes every response shares."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from bitinglip.core import InvalidInput

MAX_N = 128

MAX_LOGPROBS = 20
# Logprob entries (each a decoded token) a request may ask for per generated step, over all its choices: building
# them runs on the event loop that serves every request, so it is bounded (n 64 x 21 stalled the server).
MAX_LOGPROB_ENTRIES = 256

MAX_STOP = 16


def check_logprob_work(n: int, top: int, param: str) -> None:
    """Refuse a request whose logprobs would cost more than MAX_LOGPROB_ENTRIES per step (`n` x (`top` + 1))."""
    if n * (top + 1) > MAX_LOGPROB_ENTRIES:
        raise InvalidInput(
            f"`n` x (`{param}` + 1) must be at most {MAX_LOGPROB_ENTRIES} (logprobs are built for every choice at every"
            f" token), got {n} x ({top} + 1) = {n * (top + 1)}; ask for fewer choices or fewer alternatives",
            param=param,
            code="too_many_logprobs",
        )


def check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not (low <= value <= high):
        raise InvalidInput(f"`{name}` must be between {low:g} and {high:g}, got {value}", param=name)


class StrictRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A request field BitingLip does not serve is refused (400 naming it), never accepted and dropped: a client
    that asks for tools or a setting we ignore would otherwise fail later, on an answer it did not ask for."""


class StreamOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


# vLLM's structured outputs (`extra_body={"structured_outputs": {...}}`): one constraint, and options.
CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object")

STRUCTURED_OPTIONS = frozenset({"disable_any_whitespace", "disable_additional_properties", "whitespace_pattern"})
# A constraint is compiled (on the server's CPU, before the request runs) in time that grows with its size: a
# 100,000-way `choice` took minutes. Bounded by its options and its encoded size.
MAX_CHOICES = 256
MAX_CONSTRAINT_BYTES = 64 * 1024


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
    if kind == "choice" and len(value) > MAX_CHOICES:
        raise InvalidInput(
            f"`choice` takes at most {MAX_CHOICES} options, got {len(value)}",
            param="structured_outputs.choice",
            code="constraint_too_large",
        )
    if (size := len(value.encode() if isinstance(value, str) else msgspec.json.encode(value))) > MAX_CONSTRAINT_BYTES:
        param = "response_format.json_schema.schema" if response_format is not None else f"structured_outputs.{kind}"
        raise InvalidInput(
            f"the output constraint is {size:,} bytes; at most {MAX_CONSTRAINT_BYTES:,} are taken",
            param=param,
            code="constraint_too_large",
        )
    if kind in ("regex", "grammar") and not (isinstance(value, str) and value):
        raise InvalidInput(f"`{kind}` must be a non-empty string", param=f"structured_outputs.{kind}")
    if kind == "json" and not isinstance(value, dict | str):
        raise InvalidInput("`json` must be a JSON schema (an object)", param="structured_outputs.json")
    if kind in ("json", "json_object") and not {"disable_any_whitespace", "whitespace_pattern"} & set(given):
        given = {**given, "disable_any_whitespace": True}
    return given


class OutputLimits(msgspec.Struct, frozen=True):
    """The server's bounds on how many tokens a response makes (`gateway.default_max_tokens`, `max_output_tokens`)."""

    default: int | None = None  # when the request names none; None: the room left in the context
    ceiling: int | None = None  # the most any request gets; more is clamped


NO_OUTPUT_LIMITS = OutputLimits()


class SamplingRequest(StrictRequest):
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
        self,
        max_tokens: int | None,
        prompt_len: int,
        max_model_len: int,
        prompt_param: str,
        limits: OutputLimits = NO_OUTPUT_LIMITS,
        *,
        clamp: bool = False,
    ) -> dict[str, Any]:
        """The arguments every request shares, checked; a request's own `sampling_args` adds the rest.

        ``clamp``: a `max_tokens` past the context's room is cut to that room rather than refused (the agent APIs:
        Claude Code asks for 32,000 on every request, whatever the model's context)."""
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
        if self.min_tokens is not None and self.min_tokens < 0:
            raise InvalidInput(f"`min_tokens` must be at least 0, got {self.min_tokens}", param="min_tokens")
        if max_tokens is not None and self.min_tokens is not None and self.min_tokens > max_tokens:
            raise InvalidInput(
                f"`min_tokens` ({self.min_tokens}) must not be more than `max_tokens` ({max_tokens})",
                param="min_tokens",
            )
        room = max_model_len - prompt_len
        if max_tokens is not None:
            if max_tokens < 1:
                raise InvalidInput(
                    f"`max_tokens` must be at least 1 (0 only with `echo`, to score the prompt), got {max_tokens}",
                    param="max_tokens",
                )
            if prompt_len + max_tokens > max_model_len and not clamp:
                raise InvalidInput(
                    f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                    f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the "
                    "completion). Please reduce the prompt or max_tokens.",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
        args: dict[str, Any] = {
            "n": self.n,
            "max_tokens": given_max_tokens(max_tokens, room, limits),
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


def given_max_tokens(asked: int | None, room: int, limits: OutputLimits) -> int:
    """The tokens a response may make: what was asked (or the server's default), within the context's room and the
    server's ceiling."""
    given = room if asked is None and limits.default is None else min(room, asked or limits.default or room)
    return given if limits.ceiling is None else min(given, limits.ceiling)


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int


class Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # Where the engine says: how many of the prompt's tokens its prefix cache held (not computed again).
    prompt_tokens_details: PromptTokensDetails | None = None
    # Where the model reasons (its deployment names a `reasoning_parser`): how many of the completion's tokens.
    completion_tokens_details: CompletionTokensDetails | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int] | None
