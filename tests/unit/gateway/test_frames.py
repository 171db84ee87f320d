"""The streaming hot path: plain chunks from pre-encoded parts (exactly the struct's bytes), and the stream interval."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from bitinglip.core import FinalEvent
from bitinglip.gateway.protocol.chat import ChatChunkChoice, ChatCompletionChunk, DeltaMessage
from bitinglip.gateway.protocol.completion import CompletionChoice, CompletionRequest, CompletionResponse
from bitinglip.gateway.serving.base import Prepared, Serving, StreamContext
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.completion import CompletionServing
from doubles import ScriptedEngine

TEXTS = [
    "",
    "Hello",
    ' "quoted" \\ back\\slash',
    "tab\tnew\nline\r\x00\x1f",
    "\u2028\u2029\x85",
    "naïve 日本 🦊",
    "</s>",
]
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
    frame = CompletionServing().frame(StreamContext(_prep(model), chunk_id, 1_732_000_000))
    assert frame is not None
    for text in TEXTS:
        for finish in FINISHES:
            for index in (0, 7, 123):
                choice = CompletionChoice(index=index, text=text, logprobs=None, finish_reason=finish)
                struct = CompletionResponse(
                    id=chunk_id, created=1_732_000_000, model=model, choices=[choice], usage=None
                )
                got = frame.event(index, text, finish)
                assert got == _event(struct)
                assert msgspec.json.decode(got[len(b"data: ") : -2])["choices"][0]["text"] == text


@pytest.mark.parametrize("chunk_id", IDS)
@pytest.mark.parametrize("model", MODELS)
def test_chat_frame_is_the_struct_encoding(chunk_id: str, model: str) -> None:
    frame = ChatServing().frame(StreamContext(_prep(model), chunk_id, 42))
    assert frame is not None
    for text in TEXTS:
        for finish in FINISHES:
            for index in (0, 3):
                choice = ChatChunkChoice(index=index, delta=DeltaMessage(content=text), finish_reason=finish)
                struct = ChatCompletionChunk(id=chunk_id, created=42, model=model, choices=[choice])
                assert frame.event(index, text, finish) == _event(struct)


def test_chunks_that_are_not_plain_have_no_frame() -> None:
    """Logprobs, echo and tools change a chunk's shape: those go through the structs."""
    completion, chat = CompletionServing(), ChatServing()
    assert completion.frame(StreamContext(_prep("tiny", logprobs=2), "cmpl-1", 1)) is None
    assert completion.frame(StreamContext(_prep("tiny", echo=True), "cmpl-1", 1)) is None
    assert chat.frame(StreamContext(_prep("tiny", logprobs=0), "chatcmpl-1", 1)) is None
    assert chat.frame(StreamContext(_prep("tiny", tools=object()), "chatcmpl-1", 1)) is None


async def _streamed_params(serving: CompletionServing, engine: ScriptedEngine, stream: bool = True) -> dict[str, Any]:
    req = msgspec.convert({"model": "fake", "prompt": "hi", "max_tokens": 4, "stream": stream}, CompletionRequest)
    prep = await serving.prepare(req, engine)
    assert isinstance(prep.params, dict)
    return prep.params


LOADS = [(0, 1), (31, 1), (32, 4), (48, 6), (64, 8), (300, 8)]  # (open streams, expected interval)


@pytest.fixture
def open_streams(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    return lambda n: monkeypatch.setattr(Serving, "open_streams", n)


@pytest.mark.parametrize(("streams", "expected"), LOADS)
async def test_auto_stream_interval_grows_with_the_streams_open(
    open_streams: Callable[[int], None], streams: int, expected: int
) -> None:
    open_streams(streams)
    assert (await _streamed_params(CompletionServing("auto"), ScriptedEngine()))["stream_interval"] == expected


async def test_streams_are_counted_while_they_send_and_not_after() -> None:
    engine = ScriptedEngine()
    serving = CompletionServing("auto")
    req = msgspec.convert({"model": "fake", "prompt": "hi", "max_tokens": 4, "stream": True}, CompletionRequest)
    before = Serving.open_streams
    events = serving.stream(await serving.prepare(req, engine), "r1")
    await anext(events)
    assert Serving.open_streams == before + 1
    await events.aclose()  # a client that leaves mid-stream
    assert Serving.open_streams == before
    events_out = [e async for e in serving.stream(await serving.prepare(req, engine), "r2")]
    assert Serving.open_streams == before
    # The finishing event and [DONE] leave together, as the body's last write.
    last = events_out[-1]
    assert isinstance(last, FinalEvent) and last.endswith(b"data: [DONE]\n\n")
    assert b'"finish_reason":"stop"' in last and not any(b'"finish_reason":"' in e for e in events_out[:-1])


async def test_a_fixed_stream_interval_holds_and_whole_answers_have_none(open_streams: Callable[[int], None]) -> None:
    engine = ScriptedEngine()
    open_streams(200)
    assert (await _streamed_params(CompletionServing(1), engine))["stream_interval"] == 1
    assert (await _streamed_params(CompletionServing(3), engine))["stream_interval"] == 3
    assert "stream_interval" not in await _streamed_params(CompletionServing("auto"), engine, stream=False)
