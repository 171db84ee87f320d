"""`/v1/completions`: the request (a prompt continued as it is, with echo and logprobs) and the response."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from bitinglip.gateway.protocol.sampling import (
    MAX_LOGPROBS,
    NO_OUTPUT_LIMITS,
    OutputLimits,
    SamplingRequest,
    Usage,
    check_logprob_work,
    check_range,
    structured_outputs,
)


class CompletionRequest(SamplingRequest):
    # str, list of str, or list of token ids: msgspec cannot type a union of two list types; serving checks it.
    prompt: str | list[Any] | None = None
    logprobs: int | None = None
    echo: bool = False

    @property
    def score_only(self) -> bool:
        """`echo` with `max_tokens: 0`: the prompt scored (its logprobs), nothing generated, as evaluation
        harnesses ask for log-likelihoods."""
        return self.echo and self.max_tokens == 0

    def asked_max_tokens(self) -> int | None:
        return None if self.score_only else self.max_tokens

    def sampling_args(
        self, prompt_len: int, max_model_len: int, limits: OutputLimits = NO_OUTPUT_LIMITS
    ) -> dict[str, Any]:
        check_range("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if self.logprobs is not None:
            check_logprob_work(self.n, self.logprobs, "logprobs")
        max_tokens = self.max_tokens if self.max_tokens is not None else 16  # OpenAI's default for completions
        # The engine cannot generate nothing: scoring asks it for one token, which nobody sees or pays for.
        args = self._sampling_args(1 if self.score_only else max_tokens, prompt_len, max_model_len, "prompt", limits)
        if self.logprobs is not None:
            args["logprobs"] = self.logprobs
            if self.echo:  # the prompt's tokens get theirs too (the first has none: nothing predicts it)
                args["prompt_logprobs"] = self.logprobs
        if (structured := structured_outputs(self.structured_outputs, None)) is not None:
            args["structured_outputs"] = structured
        return args


class CompletionLogprobs(msgspec.Struct):
    tokens: list[str] = msgspec.field(default_factory=list)
    token_logprobs: list[float | None] = msgspec.field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = msgspec.field(default_factory=list)
    text_offset: list[int] = msgspec.field(default_factory=list)


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None
    object: Literal["text_completion"] = "text_completion"
