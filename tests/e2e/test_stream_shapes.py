"""Streamed events have OpenAI's chunk shapes, field by field: what clients that parse the wire themselves rely on
(the streaming hot path may be rewritten for speed; these shapes must not move)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk

from e2e.conftest import MODEL, Server, start_server, stop_server


def events(server: Server, path: str, body: dict[str, Any]) -> list[Any]:
    r = httpx.post(f"{server.url}{path}", json=body | {"model": MODEL, "stream": True}, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    frames = r.text.split("\n\n")
    assert all(f.startswith("data: ") for f in frames if f), "every event is one data: line"
    return [json.loads(f[len("data: ") :]) for f in frames if f and f != "data: [DONE]"]


def test_chat_chunks_have_openais_shape(server: Server) -> None:
    chunks = events(
        server,
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 6,
            "ignore_eos": True,
            "n": 2,
            "logprobs": True,
            "top_logprobs": 1,
            "stream_options": {"include_usage": True},
        },
    )
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk, strict=True)  # the official client's own type
        assert set(chunk) == {"id", "object", "created", "model", "choices", "usage"}
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == MODEL
        for choice in chunk["choices"]:
            assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
            assert set(choice["delta"]) <= {"role", "content", "tool_calls"}
    first, last = chunks[0], chunks[-1]
    assert [c["delta"] for c in first["choices"]] == [{"role": "assistant", "content": ""}] * 2
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 12
    assert all(c["usage"] is None for c in chunks[:-1])
    body = [c for c in chunks[1:-1]]
    assert {ch["index"] for c in body for ch in c["choices"]} == {0, 1}
    finishes = [ch["finish_reason"] for c in body for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["length", "length"]
    tokens = [t for c in body for ch in c["choices"] for t in ch["logprobs"]["content"]]
    assert len(tokens) == 12 and all(set(t) == {"token", "logprob", "bytes", "top_logprobs"} for t in tokens)


def test_completion_chunks_have_openais_shape(server: Server) -> None:
    chunks = events(
        server,
        "/v1/completions",
        {"prompt": "def main():", "max_tokens": 5, "ignore_eos": True, "logprobs": 1, "echo": False},
    )
    # OpenAI's streamed completions reuse its whole-response type, whose finish_reason may not be null: the last
    # event has one, the ones before have null (as OpenAI sends them).
    Completion.model_validate(chunks[-1], strict=True)
    for chunk in chunks:
        assert set(chunk) == {"id", "object", "created", "model", "choices", "usage"}
        assert chunk["object"] == "text_completion" and chunk["id"].startswith("cmpl-") and chunk["usage"] is None
        (choice,) = chunk["choices"]
        assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
        assert set(choice["logprobs"]) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert sum(len(c["choices"][0]["logprobs"]["tokens"]) for c in chunks) == 5


@pytest.fixture(scope="module")
def coalescing(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    """A server that sends 8 tokens per event, whatever the load (the default does so from 64 streams on)."""
    srv = start_server(tmp_path_factory.mktemp("coalescing"), tiny_model_dir, BITINGLIP_GATEWAY__STREAM_INTERVAL="8")
    yield srv
    stop_server(srv)


async def _stream_tokens(http: httpx.AsyncClient, server: Server, prompt: str) -> tuple[list[tuple[int, str]], int]:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "ignore_eos": True, "logprobs": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    r = await http.post(f"{server.url}/v1/completions", json=body)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    chunks = [json.loads(f[len("data: ") :]) for f in r.text.split("\n\n") if f and f != "data: [DONE]"]
    per_event = [(len(c["choices"][0]["logprobs"]["tokens"]), c["choices"][0]["text"]) for c in chunks if c["choices"]]
    return per_event, chunks[-1]["usage"]["completion_tokens"]


def test_events_of_several_tokens_lose_and_repeat_none_and_the_first_text_is_not_held(coalescing: Server) -> None:
    """Every token is sent exactly once, at most 8 to an event; and a first token that decodes to no text yet
    (part of a character: common with random weights) does not hold the first text back a whole interval."""

    async def run() -> list[tuple[list[tuple[int, str]], int]]:
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(_stream_tokens(http, coalescing, f"Request {i}: once") for i in range(24)))

    for per_event, usage in asyncio.run(run()):
        assert usage == 24
        assert sum(n for n, _ in per_event) == 24, per_event  # none lost, none repeated
        assert all(n <= 8 for n, _ in per_event), per_event
        through_first_text = 0
        for n, text in per_event:
            through_first_text += n
            if text:
                break
        # Without the hurry, an empty first token (sent alone, at once) was followed by the next 8 in one event.
        assert through_first_text <= 8, per_event
