"""A streamed plain chunk is built from pre-encoded parts; its bytes must be exactly the chunk struct's encoding."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bitinglip.gateway import protocol as p
from bitinglip.gateway.serving.base import Prepared
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.completion import CompletionServing

TEXTS = ["", "Hello", ' "quoted" \\ back\\slash', "tab\tnew\nline\r\x00\x1f", "\u2028\u2029\x85", "naïve 日本 🦊", "</s>"]
FINISHES = [None, "stop", "length"]
IDS = ["cmpl-abc123", 'chatcmpl-"odd"\\id', "cmpl-ünï"]
MODELS = ["tiny", 'org/model "v2"', "モデル"]


def _prep(model: str, **overrides: Any) -> Prepared:
    fields: dict[str, Any] = {
        "model": model,
        "engine": None,
        "prompts": [([1, 2, 3], "x")],
        "params": None,
        "n": 1,
        "max_tokens": 16,
        "stream": True,
        "include_usage": False,
        "logprobs": None,
    }
    return Prepared(**(fields | overrides))


def _event(struct: msgspec.Struct) -> bytes:
    return b"data: " + msgspec.json.encode(struct) + b"\n\n"


@pytest.mark.parametrize("chunk_id", IDS)
@pytest.mark.parametrize("model", MODELS)
def test_completion_frame_is_the_struct_encoding(chunk_id: str, model: str) -> None:
    frame = CompletionServing().frame(_prep(model), chunk_id, 1_732_000_000)
    assert frame is not None
    for text in TEXTS:
        for finish in FINISHES:
            for index in (0, 7, 123):
                choice = p.CompletionChoice(index=index, text=text, logprobs=None, finish_reason=finish)
                struct = p.CompletionResponse(
                    id=chunk_id, created=1_732_000_000, model=model, choices=[choice], usage=None
                )
                got = frame.event(index, text, finish)
                assert got == _event(struct)
                assert msgspec.json.decode(got[len(b"data: ") : -2])["choices"][0]["text"] == text


@pytest.mark.parametrize("chunk_id", IDS)
@pytest.mark.parametrize("model", MODELS)
def test_chat_frame_is_the_struct_encoding(chunk_id: str, model: str) -> None:
    frame = ChatServing().frame(_prep(model), chunk_id, 42)
    assert frame is not None
    for text in TEXTS:
        for finish in FINISHES:
            for index in (0, 3):
                choice = p.ChatChunkChoice(index=index, delta=p.DeltaMessage(content=text), finish_reason=finish)
                struct = p.ChatCompletionChunk(id=chunk_id, created=42, model=model, choices=[choice])
                assert frame.event(index, text, finish) == _event(struct)


def test_chunks_that_are_not_plain_have_no_frame() -> None:
    """Logprobs, echo and tools change a chunk's shape: those go through the structs."""
    completion, chat = CompletionServing(), ChatServing()
    assert completion.frame(_prep("tiny", logprobs=2), "cmpl-1", 1) is None
    assert completion.frame(_prep("tiny", echo=True), "cmpl-1", 1) is None
    assert chat.frame(_prep("tiny", logprobs=0), "chatcmpl-1", 1) is None
    assert chat.frame(_prep("tiny", tools=object()), "chatcmpl-1", 1) is None
