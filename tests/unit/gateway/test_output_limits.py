"""The server's output limits (a default when a request names none, a ceiling, a limit past the context clamped
for the agent APIs), model aliases, and `HEAD /`, over the scripted engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import build_gateway
from litestar.testing import TestClient

from bitinglip.core import InvalidInput
from bitinglip.gateway import ModelAliases, OutputLimits
from bitinglip.gateway.protocol.chat import ChatCompletionRequest
from bitinglip.gateway.protocol.sampling import given_max_tokens
from doubles import ScriptedEngine

ASK = [{"role": "user", "content": "hi"}]


def test_given_max_tokens_takes_the_default_the_room_and_the_ceiling() -> None:
    assert given_max_tokens(None, 1000, OutputLimits()) == 1000  # no default: the room the context has left
    assert given_max_tokens(None, 1000, OutputLimits(default=64)) == 64
    assert given_max_tokens(None, 10, OutputLimits(default=64)) == 10  # never past the room
    assert given_max_tokens(500, 1000, OutputLimits(default=64)) == 500  # what was asked beats the default
    assert given_max_tokens(500, 1000, OutputLimits(ceiling=100)) == 100
    assert given_max_tokens(None, 1000, OutputLimits(default=640, ceiling=100)) == 100


def test_a_limit_past_the_context_is_refused_on_chat_and_clamped_for_the_agent_apis() -> None:
    req = ChatCompletionRequest(model="m", max_tokens=32_000)
    with pytest.raises(InvalidInput) as refused:
        req.sampling_args(100, 2048)
    assert refused.value.code == "context_length_exceeded"
    assert req.sampling_args(100, 2048, clamp=True)["max_tokens"] == 1948


def test_aliases_take_an_exact_name_first_then_the_first_pattern() -> None:
    aliases = ModelAliases({"claude-*": "tiny", "claude-opus-4": "big", "gpt-?": "small", "*": "fallback"})
    assert aliases.resolve("claude-opus-4") == "big"
    assert aliases.resolve("claude-sonnet-4-5") == "tiny"
    assert aliases.resolve("gpt-5") == "small"
    assert aliases.resolve("gpt-55") == "fallback"
    assert aliases.resolve(None) is None
    assert ModelAliases().resolve("claude-x") == "claude-x"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient[Any]]:
    gateway = build_gateway(
        ScriptedEngine(max_model_len=64), tmp_path, model_aliases={"claude-*": "fake"}, max_output_tokens=5
    )
    with TestClient(gateway.app) as c:
        yield c


def test_a_ceiling_clamps_and_the_response_says_so(client: TestClient[Any]) -> None:
    r = client.post("/v1/chat/completions", json={"model": "fake", "messages": ASK, "max_tokens": 20})
    assert r.status_code == 200, r.text
    assert r.headers["x-max-tokens-clamped"] == "20->5"
    assert r.json()["usage"]["completion_tokens"] <= 5
    plain = client.post("/v1/chat/completions", json={"model": "fake", "messages": ASK, "max_tokens": 3})
    assert "x-max-tokens-clamped" not in plain.headers


def test_an_alias_reaches_its_model_and_the_response_names_what_was_asked(client: TestClient[Any]) -> None:
    r = client.post("/v1/chat/completions", json={"model": "claude-sonnet-4-5", "messages": ASK, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "claude-sonnet-4-5"
    unknown = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": ASK, "max_tokens": 2})
    assert unknown.status_code == 404


def test_the_root_answers_get_and_head_without_a_key(tmp_path: Path) -> None:
    with TestClient(build_gateway(ScriptedEngine(), tmp_path, auth=True).app) as c:
        assert c.head("/").status_code == 200
        assert c.get("/").json()["name"] == "bitinglip"
        assert c.post("/v1/chat/completions", json={"model": "fake", "messages": ASK}).status_code == 401
