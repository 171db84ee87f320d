"""`/tokenize` and `/detokenize`, as `vllm serve` takes them."""

from __future__ import annotations

import msgspec

from bitinglip.gateway.protocol.chat import ChatMessage, Tool


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
