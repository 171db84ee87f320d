"""Streamed events have OpenAI's chunk shapes, field by field: what clients that parse the wire themselves rely on
(the streaming hot path may be rewritten for speed; these shapes must not move)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk

from e2e.conftest import MODEL, Server


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
