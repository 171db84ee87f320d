"""Structured outputs on the real engine with the random-weight tiny model: bounded schemas, choices and
regexes are honoured whatever the weights say, JSON carries no filler whitespace, and a constraint the
backend cannot compile is a 400 (a stream's too) before any output."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from e2e.conftest import MODEL, Server

HELLO = [{"role": "user", "content": "Describe a thing."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 9},
        "ok": {"type": "boolean"},
    },
    "required": ["color", "count", "ok"],
    "additionalProperties": False,
}


def valid(value: object) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"color", "count", "ok"}
        and value["color"] in ("red", "green", "blue")
        and isinstance(value["count"], int)
        and 1 <= value["count"] <= 9
        and isinstance(value["ok"], bool)
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_json_schema_response_always_validates_and_has_no_filler(client: openai.OpenAI, seed: int) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=80,
        seed=seed,
        temperature=1.0,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}},
    )
    text = r.choices[0].message.content or ""
    assert valid(json.loads(text)), text
    assert not re.search(r"\s{2,}", text) and "\n" not in text, repr(text)


def test_choice_and_regex_are_honoured_on_completions(client: openai.OpenAI) -> None:
    for seed in (1, 2):
        chosen = client.completions.create(
            model=MODEL,
            prompt="Pick:",
            max_tokens=8,
            seed=seed,
            extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
        )
        assert chosen.choices[0].text in ("yes", "no")
        shaped = client.completions.create(
            model=MODEL, prompt="Code:", max_tokens=12, seed=seed,
            extra_body={"structured_outputs": {"regex": "[a-c]{3}-[0-9]{2}"}},
        )  # fmt: skip
        assert re.fullmatch(r"[a-c]{3}-[0-9]{2}", shaped.choices[0].text), shaped.choices[0].text


def test_a_streamed_json_schema_response_validates_too(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=80,
        stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert valid(json.loads(text)), text


@pytest.mark.parametrize("stream", [False, True])
def test_a_constraint_the_backend_cannot_compile_is_a_400(server: Server, stream: bool) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": stream, "structured_outputs": {"regex": "(ab"}}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "structured_outputs"
    chat = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": stream,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema.schema"


def test_bad_structured_requests_name_the_field(server: Server) -> None:
    cases = [
        ({"structured_outputs": {"choice": ["a"], "regex": "a"}}, "structured_outputs"),
        ({"structured_outputs": {"schema": {}}}, "structured_outputs.schema"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "structured_outputs"),
    ]
    for extra, param in cases:
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **extra}
        r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)


@pytest.mark.parametrize("stream", [False, True])
def test_a_constraint_with_no_finite_output_is_a_400_not_empty_text(server: Server, stream: bool) -> None:
    grammar = {"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": stream,
               "structured_outputs": {"grammar": "root ::= root root"}}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/completions", json=grammar, timeout=60)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("unsatisfiable_constraint", "structured_outputs")
    endless = {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}
    schema = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": stream,
              "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": endless}}}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=schema, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
    tool = {"type": "function", "function": {"name": "walk", "parameters": endless}}
    for choice in ("auto", "required"):
        tools = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": stream, "tools": [tool],
                 "tool_choice": choice}  # fmt: skip
        r = httpx.post(f"{server.url}/v1/chat/completions", json=tools, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "tools.0.function.parameters", r.text
        assert r.json()["error"]["code"] == "unsatisfiable_constraint"


def test_the_backends_own_check_text_is_not_leaked(server: Server) -> None:
    huge = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 1e30}}}
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": huge}}}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "Check failed" not in message and ".cc:" not in message and "exceeds" in message, message
