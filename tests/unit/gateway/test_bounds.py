"""Work that grows with a request's input is bounded before it is done: a clear 400 naming the field, and no
engine request, instead of seconds of the one event loop that serves every model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import build_gateway
from litestar.testing import TestClient

from doubles import ScriptedEngine

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def client(engine: ScriptedEngine, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_gateway(engine, tmp_path).app) as c:
        yield c


def _refused(client: TestClient, route: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(route, json=body)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_text_longer_than_any_context_is_refused_before_tokenizing(client: TestClient, engine: ScriptedEngine) -> None:
    huge = "word " * engine.max_prompt_chars
    cases = [
        ("/v1/completions", {"model": "fake", "prompt": huge}, "prompt"),
        ("/v1/completions", {"model": "fake", "prompt": ["ok", huge]}, "prompt.1"),
        ("/v1/chat/completions", {"model": "fake", "messages": [{"role": "user", "content": huge}]}, "messages"),
        ("/tokenize", {"model": "fake", "prompt": huge}, "prompt"),
    ]
    for route, body, param in cases:
        error = _refused(client, route, body)
        assert (error["code"], error["param"]) == ("context_length_exceeded", param)
        assert f"{len(huge):,} characters" in error["message"]
    assert engine.seen == []  # not one reached the engine


def test_logprobs_for_many_choices_are_bounded(client: TestClient, engine: ScriptedEngine) -> None:
    error = _refused(client, "/v1/completions", {"model": "fake", "prompt": "hi", "n": 64, "logprobs": 20})
    assert (error["code"], error["param"]) == ("too_many_logprobs", "logprobs")
    assert "64 x (20 + 1) = 1344" in error["message"]
    chat = {"model": "fake", "messages": HI, "n": 13, "logprobs": True, "top_logprobs": 20}
    assert _refused(client, "/v1/chat/completions", chat)["param"] == "top_logprobs"
    # Right at the bound is served.
    ok = client.post("/v1/completions", json={"model": "fake", "prompt": "hi", "n": 16, "logprobs": 15})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 16
    assert engine.seen and len(engine.seen) == 1


def test_output_constraints_and_tools_are_bounded_by_size(client: TestClient, engine: ScriptedEngine) -> None:
    many = {"model": "fake", "messages": HI, "structured_outputs": {"choice": [f"c{i}" for i in range(257)]}}
    error = _refused(client, "/v1/chat/completions", many)
    assert (error["code"], error["param"]) == ("constraint_too_large", "structured_outputs.choice")
    long_regex = {"model": "fake", "prompt": "hi", "structured_outputs": {"regex": "a" * 70_000}}
    assert _refused(client, "/v1/completions", long_regex)["param"] == "structured_outputs.regex"
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(3_000)}}
    big_format = {"model": "fake", "messages": HI, "response_format": {"type": "json_schema", "json_schema": {}}}
    big_format["response_format"]["json_schema"] = {"name": "x", "schema": schema}  # type: ignore[index]
    assert _refused(client, "/v1/chat/completions", big_format)["param"] == "response_format.json_schema.schema"
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    tools = [{**tool, "function": {**tool["function"], "name": f"f{i}"}} for i in range(4)]  # type: ignore[dict-item]
    error = _refused(client, "/v1/chat/completions", {"model": "fake", "messages": HI, "tools": tools})
    assert (error["code"], error["param"]) == ("tools_too_large", "tools")
    counted = _refused(client, "/tokenize", {"model": "fake", "messages": HI, "tools": tools})
    assert counted["code"] == "tools_too_large"
    assert engine.seen == []
