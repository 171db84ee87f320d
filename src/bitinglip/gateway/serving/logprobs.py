"""Logprobs in OpenAI's two shapes: chat (`content` of tokens with `top_logprobs`) and completions (parallel lists)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bitinglip.cluster import CompletionDelta, EngineClient, TokenLogprob
from bitinglip.gateway.protocol.chat import ChatTokenLogprob
from bitinglip.gateway.protocol.completion import CompletionLogprobs
from bitinglip.gateway.protocol.sampling import TopLogprob

FLOOR = -9999.0  # OpenAI's value for "impossible"; -inf is not JSON


def token_repr(logprob: TokenLogprob | None, token_id: int, engine: EngineClient) -> tuple[str, list[int], int]:
    """A token as logprobs show it: (its text, its bytes, the length it adds to the output text).

    A token that is only part of a UTF-8 character has no text of its own; as OpenAI does, it is named by its
    bytes ("bytes:\\xe2\\x80") and its `bytes` are the real ones, so a client can join them back together.
    """
    text = logprob.decoded_token if logprob is not None else None
    if text is None:
        text = engine.decode_token(token_id)
    if text and "\ufffd" not in text:
        return text, list(text.encode()), len(text)
    raw = engine.token_bytes(token_id)
    try:
        raw.decode()
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), list(raw), len(text)
    return text, list(text.encode()), len(text)  # a special token the text leaves out, or a real U+FFFD


def _ranked(position: Mapping[int, TokenLogprob], top_k: int) -> list[tuple[int, TokenLogprob]]:
    return sorted(position.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)[:top_k]


def chat_logprobs(out: CompletionDelta, engine: EngineClient, top_k: int) -> list[ChatTokenLogprob]:
    """This delta's tokens in the chat shape."""
    tokens: list[ChatTokenLogprob] = []
    for token_id, position in zip(out.token_ids, out.logprobs or [], strict=False):
        if position is None:
            continue
        sampled = position.get(token_id)
        token, raw, _ = token_repr(sampled, token_id, engine)
        tops = []
        for tid, lp in _ranked(position, top_k):
            text, raw_top, _ = token_repr(lp, tid, engine)
            tops.append(TopLogprob(token=text, logprob=max(lp.logprob, FLOOR), bytes=raw_top))
        value = max(sampled.logprob, FLOOR) if sampled is not None else FLOOR
        tokens.append(ChatTokenLogprob(token=token, logprob=value, bytes=raw, top_logprobs=tops))
    return tokens


def extend_completion_logprobs(
    into: CompletionLogprobs,
    token_ids: Sequence[int],
    positions: Sequence[Mapping[int, TokenLogprob] | None],
    engine: EngineClient,
    top_k: int,
    text_offset: int,
) -> int:
    """Append tokens to ``into`` in the completions shape, starting at ``text_offset``; returns the offset after.

    A token without a position (the prompt's first: nothing comes before it to predict it) gets null values,
    as OpenAI and `vllm serve` give for an echoed prompt."""
    for token_id, position in zip(token_ids, positions, strict=False):
        sampled = position.get(token_id) if position is not None else None
        token, _, advance = token_repr(sampled, token_id, engine)
        into.tokens.append(token)
        into.text_offset.append(text_offset)
        text_offset += advance
        if position is None:
            into.token_logprobs.append(None)
            into.top_logprobs.append(None)
            continue
        into.token_logprobs.append(max(sampled.logprob, FLOOR) if sampled is not None else FLOOR)
        into.top_logprobs.append(
            {token_repr(lp, tid, engine)[0]: max(lp.logprob, FLOOR) for tid, lp in _ranked(position, top_k)}
        )
    return text_offset
