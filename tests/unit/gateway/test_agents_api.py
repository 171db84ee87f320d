"""Embeddings, scoring completions and tool fields at the OpenAI edge, over the scripted engine."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_support import build_gateway
from litestar.testing import TestClient

from doubles import ScriptedEngine


def make_client(engine: ScriptedEngine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_gateway(engine, tmp_path).app) as c:
        yield c


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    yield from make_client(ScriptedEngine(), tmp_path)


@pytest.fixture
def embedder(tmp_path: Path) -> Iterator[TestClient]:
    yield from make_client(ScriptedEngine(embedding=True), tmp_path)


def test_embeddings_take_every_input_shape_and_both_encodings(embedder: TestClient) -> None:
    for given, count in [("hi", 1), (["hi", "yo"], 2), ([104, 105], 1), ([[104, 105], [121]], 2)]:
        r = embedder.post("/v1/embeddings", json={"model": "fake", "input": given})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [d["index"] for d in body["data"]] == list(range(count)) and body["object"] == "list"
        assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in body["data"])
    # The text "hi" and the ids that spell it are one input: the same vector.
    text = embedder.post("/v1/embeddings", json={"model": "fake", "input": "hi"}).json()["data"][0]["embedding"]
    ids = embedder.post("/v1/embeddings", json={"model": "fake", "input": [104, 105]}).json()
    assert ids["data"][0]["embedding"] == text and ids["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    b64 = embedder.post("/v1/embeddings", json={"model": "fake", "input": "hi", "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == pytest.approx(text, rel=1e-6)
    short = embedder.post("/v1/embeddings", json={"model": "fake", "input": "hi", "dimensions": 4}).json()
    assert len(short["data"][0]["embedding"]) == 4


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input.1"),
        ({"input": ["a", 3]}, "input.1"),
        ({"input": [[1], [-1]]}, "input.1"),
        ({"input": "x" * 100}, "input.0"),  # past the double's 64-token context
        ({"input": "hi", "dimensions": 0}, "dimensions"),
        ({"input": "hi", "dimensions": 9}, "dimensions"),  # the engine says no
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "hi", "extra": 1}, "extra"),
    ],
)
def test_bad_embedding_requests(embedder: TestClient, body: dict[str, object], param: str) -> None:
    r = embedder.post("/v1/embeddings", json={"model": "fake"} | body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_each_route_refuses_the_other_kind_of_model(client: TestClient, embedder: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"model": "fake", "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_model_kind"
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    assert embedder.post("/v1/chat/completions", json=chat).json()["error"]["code"] == "wrong_model_kind"
    assert embedder.post("/v1/completions", json={"model": "fake", "prompt": "x"}).status_code == 400
    caps = embedder.get("/v1/models").json()["data"][0]["capabilities"]
    assert caps == {
        "chat": False,
        "completions": False,
        "tools": False,
        "reasoning": False,
        "structured_outputs": False,
        "embeddings": True,
    }


def test_echo_with_logprobs_scores_the_prompt_and_max_tokens_zero_scores_only_it(client: TestClient) -> None:
    body = {"model": "fake", "prompt": [[104, 105], [121]], "echo": True, "logprobs": 1, "max_tokens": 0}
    r = client.post("/v1/completions", json=body).json()
    first, second = r["choices"]
    assert first["text"] == "hi" and second["text"] == "y"  # token-id prompts echoed as text
    assert first["logprobs"]["token_logprobs"] == [None, -0.25] and first["logprobs"]["top_logprobs"][0] is None
    assert first["logprobs"]["text_offset"] == [0, 1] and first["finish_reason"] == "length"
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
    grown = client.post("/v1/completions", json=body | {"prompt": "hi", "max_tokens": 2}).json()["choices"][0]
    assert grown["text"] == "hiHello there"
    assert grown["logprobs"]["token_logprobs"] == [None, -0.25, -0.5, -0.5]
    assert grown["logprobs"]["text_offset"] == [0, 1, 2, 7]  # the new tokens start after the echoed prompt


def test_a_streamed_echo_carries_the_prompt_scores_with_the_first_event(client: TestClient) -> None:
    body = {"model": "fake", "prompt": "hi", "echo": True, "logprobs": 0, "max_tokens": 2, "stream": True}
    chunks = [c for c in client.post("/v1/completions", json=body).text.split("\n\n") if c.startswith("data: {")]

    first, second = (json.loads(c[len("data: ") :])["choices"][0] for c in chunks[:2])
    assert first["text"] == "hiHello" and first["logprobs"]["token_logprobs"] == [None, -0.25, -0.5]
    assert second["text"] == " there" and second["logprobs"]["text_offset"] == [7]


def test_tools_on_a_model_without_a_tool_parser_are_refused_but_none_renders_them(client: TestClient) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 400 and r.json()["error"]["code"] == "tools_not_supported"
    assert client.post("/v1/chat/completions", json=chat | {"tool_choice": "none"}).status_code == 200
    assert client.get("/v1/models").json()["data"][0]["capabilities"]["tools"] is False
