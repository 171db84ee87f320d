"""Anthropic's Messages API: the translation into a chat request, and the routes over the scripted engine."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from gateway_support import build_gateway
from litestar.testing import TestClient

from bitinglip.core import InvalidInput, Unavailable
from bitinglip.gateway import KeyCreate
from bitinglip.gateway.protocol.chat import NamedToolChoice
from bitinglip.gateway.protocol.messages import CountTokensRequest, MessagesRequest
from bitinglip.gateway.serving.messages import stop_reason
from bitinglip.gateway.serving.messages_request import rename, translate
from doubles import FakeRequestOutput, ScriptedEngine

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def request(**body: Any) -> MessagesRequest:
    return msgspec.convert(
        {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]} | body, MessagesRequest
    )


def chat_dicts(req: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    messages = translate(req).chat.messages or []
    return [{k: v for k, v in msgspec.to_builtins(m).items() if v is not None} for m in messages]


def test_the_system_prompt_joins_the_system_field_and_system_messages_in_order() -> None:
    req = request(
        system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "B"}],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "C"},
            {"role": "assistant", "content": "yo"},
            {"role": "system", "content": [{"type": "text", "text": "D"}]},
        ],
    )
    assert chat_dicts(req) == [
        {"role": "system", "content": "A\n\nB\n\nC\n\nD"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    assert translate(request(system="S")).chat.messages[0].content == "S"  # type: ignore[index]
    assert chat_dicts(request())[0]["role"] == "user"  # no system at all: no system message


def test_tool_use_and_tool_result_blocks_become_chat_tool_turns() -> None:
    req = request(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "weather?"}, {"type": "text", "text": "Paris"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "city"}],
                    },
                    {"type": "text", "text": "Thanks"},
                ],
            },
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
        ]
    )
    messages = chat_dicts(req)
    assert messages[0] == {"role": "user", "content": "weather?\nParis"}
    assistant = messages[1]
    assert assistant["content"] == "Looking."
    calls = assistant["tool_calls"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("toolu_1", "get_weather", {"city": "Paris"}),
        ("toolu_2", "get_weather", {}),
    ]
    assert messages[2] == {"role": "tool", "content": "Sunny", "tool_call_id": "toolu_1"}
    assert messages[3] == {"role": "tool", "content": "no\ncity", "tool_call_id": "toolu_2"}
    assert messages[4] == {"role": "user", "content": "Thanks"}
    assert messages[5] == {"role": "assistant", "content": ""}  # only thinking: dropped, an empty turn left
    # An assistant turn of calls alone has no content at all.
    only_call = request(
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
        ]
    )
    assert "content" not in chat_dicts(only_call)[1]


@pytest.mark.parametrize(
    ("content", "role", "param"),
    [
        ([{"type": "image", "source": {}}], "user", "messages.0.content.0.type"),
        ([{"type": "text", "text": "a"}, {"type": "document", "source": {}}], "user", "messages.0.content.1.type"),
        ([{"type": "server_tool_use", "id": "s", "name": "web_search"}], "assistant", "messages.0.content.0.type"),
        ([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "user", "messages.0.content.0.type"),
        ([{"type": "tool_result", "tool_use_id": "t", "content": "r"}], "assistant", "messages.0.content.0.type"),
        ([{"type": "tool_result", "content": "r"}], "user", "messages.0.content.0.tool_use_id"),
        (
            [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}],
            "user",
            "messages.0.content.0.content.0.type",
        ),
        ([{"type": "tool_use", "id": "t", "name": "f", "input": [1]}], "assistant", "messages.0.content.0.input"),
        ([{"type": "text"}], "user", "messages.0.content.0.text"),
        ("hi", "tool", "messages.0.role"),
    ],
)
def test_what_a_text_model_cannot_take_is_refused_by_name(content: Any, role: str, param: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        translate(request(messages=[{"role": role, "content": content}]))
    assert refused.value.param == param
    assert param.rsplit(".", 1)[0] in refused.value.message


def test_custom_tools_become_functions_and_server_tools_are_left_out() -> None:
    req = request(
        tools=[
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            {"name": "get_weather", "description": "The forecast", "input_schema": SCHEMA, "cache_control": {}},
            {"type": "bash_20250124", "name": "bash"},
            {"type": "custom", "name": "add", "input_schema": {"type": "object"}},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        ]
    )
    done = translate(req)
    tools = [msgspec.to_builtins(t) for t in done.chat.tools or []]
    for tool in tools:
        tool["function"] = {k: v for k, v in tool["function"].items() if v is not None}
    assert tools == [
        {"type": "function", "function": {"name": "get_weather", "description": "The forecast", "parameters": SCHEMA}},
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
    ]
    assert done.tool_origins == [1, 3]
    # Only server tools: no tools at all (an `auto` choice then asks for nothing).
    only_server = translate(
        request(tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "auto"})
    )
    assert only_server.chat.tools is None and only_server.chat.tool_choice is None
    with pytest.raises(InvalidInput) as no_schema:
        translate(request(tools=[{"name": "f"}]))
    assert no_schema.value.param == "tools.0.input_schema"


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", None),
        ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, "named", False),
    ],
)
def test_tool_choice_maps_to_chats(choice: dict[str, Any], expected: str, parallel: bool | None) -> None:
    tools = [{"name": "get_weather", "input_schema": SCHEMA}]
    chat = translate(request(tools=tools, tool_choice=choice)).chat
    if expected == "named":
        assert isinstance(chat.tool_choice, NamedToolChoice) and chat.tool_choice.function.name == "get_weather"
    else:
        assert chat.tool_choice == expected
    assert chat.parallel_tool_calls is parallel
    with pytest.raises(InvalidInput) as nameless:
        translate(request(tools=tools, tool_choice={"type": "tool"}))
    assert nameless.value.param == "tool_choice.name"


def test_sampling_fields_map_and_temperature_is_anthropics_range() -> None:
    chat = translate(
        request(max_tokens=300, temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["\n\n"], stream=True)
    ).chat
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.top_k, chat.stop, chat.stream) == (
        300,
        0.5,
        0.9,
        40,
        ["\n\n"],
        True,
    )
    with pytest.raises(InvalidInput) as hot:
        translate(request(temperature=1.5))
    assert hot.value.param == "temperature"
    counted = msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "x"}]}, CountTokensRequest)
    assert translate(counted).chat.max_tokens is None  # count_tokens takes no max_tokens


def test_chat_errors_are_put_in_the_messages_requests_names() -> None:
    done = translate(
        request(
            system="s",
            messages=[
                {"role": "user", "content": "a"},
                {"role": "system", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            tools=[{"type": "web_search_20250305", "name": "w"}, {"name": "f", "input_schema": SCHEMA}],
        )
    )
    exc = InvalidInput("`tools.0.function.parameters` is bad", param="tools.0.function.parameters")
    rename(exc, done)
    assert (exc.param, exc.message) == ("tools.1.input_schema", "`tools.1.input_schema` is bad")
    exc = InvalidInput("tools[0].function.name must be short", param="tools.0.function.name")
    rename(exc, done)
    assert (exc.param, exc.message) == ("tools.1.name", "tools[1].name must be short")
    exc = InvalidInput("messages[2] is odd", param="messages.2.content")  # the chat's third: the request's third
    rename(exc, done)
    assert (exc.param, exc.message) == ("messages.2.content", "messages[2] is odd")
    exc = InvalidInput("messages[0] is odd", param="messages.0")  # the chat's first: the merged system prompt
    rename(exc, done)
    assert exc.param == "system"
    exc = InvalidInput("`stop` sequences must not be empty", param="stop")
    rename(exc, done)
    assert (exc.param, exc.message) == ("stop_sequences", "`stop_sequences` must not be empty")


@pytest.mark.parametrize(
    ("finish", "reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("abort", "end_turn")],
)
def test_stop_reasons(finish: str, reason: str) -> None:
    asked = SimpleNamespace(asked_max_tokens=None)  # the client's own max_tokens held
    assert stop_reason(finish, None, asked) == reason  # type: ignore[arg-type]
    assert stop_reason("stop", "\n\n", asked) == "stop_sequence"  # type: ignore[arg-type]
    # Cut by a limit the server set below the client's: the turn ends, as an agent must take it.
    clamped = SimpleNamespace(asked_max_tokens=32000)
    assert stop_reason("length", None, clamped) == "end_turn"  # type: ignore[arg-type]
    assert stop_reason("tool_calls", None, clamped) == "tool_use"  # type: ignore[arg-type]


# -- the routes


@dataclass
class FailingEngine(ScriptedEngine):
    """Sends its first word, then fails as an engine that died mid-request."""

    async def generate(
        self, prompt_ids: list[int], prompt_text: str | None, params: object, request_id: str, priority: int = 0
    ) -> AsyncGenerator[FakeRequestOutput, None]:
        async for output in super().generate(prompt_ids, prompt_text, params, request_id, priority):
            yield output
            raise Unavailable("the engine died", code="engine_dead")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build_gateway(ScriptedEngine(), tmp_path).app) as c:
        yield c


HI = {"model": "fake", "max_tokens": 32000, "messages": [{"role": "user", "content": "hi"}]}


def events(body: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for chunk in body.strip().split("\n\n"):
        name, data = chunk.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        parsed = json.loads(data.removeprefix("data: "))
        assert parsed["type"] == name.removeprefix("event: ")
        out.append((parsed["type"], parsed))
    return out


def test_a_message_whole_and_streamed(client: TestClient) -> None:
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219,whatever-2099-01-01"}
    body = HI | {
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "u"},
        "context_management": {"edits": []},
        "service_tier": "auto",
        "container": None,
        "mcp_servers": [],
    }
    r = client.post("/v1/messages?beta=true", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["x-max-tokens-clamped"].startswith("32000->")  # the double's context is 64 tokens
    m = r.json()
    assert m["id"].startswith("msg_") and m["type"] == "message" and m["role"] == "assistant" and m["model"] == "fake"
    assert m["content"] == [{"type": "text", "text": "Hello there friend"}]
    assert (m["stop_reason"], m["stop_sequence"]) == ("end_turn", None)
    prompt = m["usage"]["input_tokens"]
    assert m["usage"] == {
        "input_tokens": prompt,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    counted = client.post("/v1/messages/count_tokens", json=body)
    assert counted.status_code == 200 and counted.json() == {"input_tokens": prompt}

    streamed = client.post("/v1/messages", json=body | {"stream": True, "max_tokens": 2})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    got = events(streamed.text)
    assert [name for name, _ in got] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = got[0][1]["message"]
    assert start["usage"]["input_tokens"] == prompt and start["content"] == [] and start["stop_reason"] is None
    assert got[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(e["delta"]["text"] for n, e in got if n == "content_block_delta") == "Hello there"
    assert got[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": 2},
    }


def test_a_stop_sequence_is_named_whole_and_streamed(client: TestClient) -> None:
    body = HI | {"stop_sequences": ["zzz", " friend"]}
    m = client.post("/v1/messages", json=body).json()
    assert m["content"] == [{"type": "text", "text": "Hello there"}]
    assert (m["stop_reason"], m["stop_sequence"]) == ("stop_sequence", " friend")
    got = events(client.post("/v1/messages", json=body | {"stream": True}).text)
    delta = next(e for name, e in got if name == "message_delta")
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": " friend"}
    # Ended by the model, not by a stop sequence: none named.
    plain = client.post("/v1/messages", json=HI | {"stop_sequences": ["zzz"]}).json()
    assert (plain["stop_reason"], plain["stop_sequence"]) == ("end_turn", None)


def test_a_cut_by_the_servers_ceiling_is_not_the_clients_max_tokens(tmp_path: Path) -> None:
    """Claude Code asks for 32,000 tokens and fails a turn that says `max_tokens`: a cut by the server's own
    ceiling ends the turn (said in the header), a cut by the client's own limit is `max_tokens`."""
    with TestClient(build_gateway(ScriptedEngine(), tmp_path, max_output_tokens=2).app) as c:
        for stream in (False, True):
            r = c.post("/v1/messages", json=HI | {"stream": stream})
            assert r.status_code == 200 and r.headers["x-max-tokens-clamped"] == "32000->2"
            reason = events(r.text)[-2][1]["delta"]["stop_reason"] if stream else r.json()["stop_reason"]
            assert reason == "end_turn"
        own = c.post("/v1/messages", json=HI | {"max_tokens": 2})
        assert "x-max-tokens-clamped" not in own.headers and own.json()["stop_reason"] == "max_tokens"
        assert own.json()["usage"]["output_tokens"] == 2


def test_an_error_after_the_stream_started_is_an_error_event(tmp_path: Path) -> None:
    with TestClient(build_gateway(FailingEngine(), tmp_path).app) as c:
        r = c.post("/v1/messages", json=HI | {"stream": True})
    assert r.status_code == 200
    got = events(r.text)
    assert [name for name, _ in got][:2] == ["message_start", "ping"]
    assert got[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "the engine died"}})


@pytest.mark.parametrize(
    ("body", "status", "kind", "names"),
    [
        ({"max_tokens": None}, 400, "invalid_request_error", "max_tokens"),
        ({"max_tokens": "many"}, 400, "invalid_request_error", "max_tokens"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "invalid_request_error", "messages.0.content"),
        ({"temperature": 1.5}, 400, "invalid_request_error", "temperature"),
        ({"stop_sequences": [""]}, 400, "invalid_request_error", "stop_sequences"),
        (
            {
                "tools": [
                    {"type": "web_search_20250305", "name": "w"},
                    {"name": "f", "input_schema": {"type": "string"}},
                ]
            },
            400,
            "invalid_request_error",
            "tools.1.input_schema",
        ),
        ({"tool_choice": {"type": "any"}}, 400, "invalid_request_error", "tool_choice"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            400,
            "invalid_request_error",
            "messages.0.content.0",
        ),
        ({"model": "nope"}, 404, "not_found_error", "nope"),
    ],
)
def test_errors_in_anthropics_envelope(
    client: TestClient, body: dict[str, Any], status: int, kind: str, names: str
) -> None:
    given = {k: v for k, v in (HI | body).items() if v is not None}
    r = client.post("/v1/messages", json=given)
    assert r.status_code == status, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == kind and set(error["error"]) == {"type", "message"}
    assert names in error["error"]["message"]


def test_count_tokens_errors_too(client: TestClient) -> None:
    r = client.post("/v1/messages/count_tokens", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.post("/v1/messages/count_tokens", json={"model": "fake"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_an_embedding_model_is_refused_on_both_routes(tmp_path: Path) -> None:
    with TestClient(build_gateway(ScriptedEngine(embedding=True), tmp_path).app) as c:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            r = c.post(path, json=HI)
            assert r.status_code == 400 and "embedding model" in r.json()["error"]["message"], r.text


def test_keys_apply_and_are_refused_in_anthropics_envelope(tmp_path: Path) -> None:
    gateway = build_gateway(ScriptedEngine(), tmp_path, auth=True)
    with TestClient(gateway.app) as c:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            r = c.post(path, json=HI)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            bad = c.post(path, json=HI, headers={"x-api-key": "sk-nope"})
            assert bad.status_code == 401 and bad.json()["type"] == "error"
        key = c.blocking_portal.call(gateway.keys.create, KeyCreate(name="k", scope="inference")).key
        r = c.post("/v1/messages", json=HI, headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
        assert r.status_code == 200, r.text
        counted = c.post("/v1/messages/count_tokens", json=HI, headers={"authorization": f"Bearer {key}"})
        assert counted.json() == {"input_tokens": r.json()["usage"]["input_tokens"]}
        limited = c.blocking_portal.call(gateway.keys.create, KeyCreate(name="m", models=["other"])).key
        refused = c.post("/v1/messages", json=HI, headers={"x-api-key": limited})
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"


def test_the_openapi_document_describes_these_errors_in_anthropics_envelope(client: TestClient) -> None:
    schema = client.get("/schema/openapi.json").json()
    create = schema["paths"]["/v1/messages"]["post"]
    assert create["operationId"] == "createMessage"
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        error = schema["paths"][path]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/AnthropicErrorResponse"}
    chat_error = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]["content"]["application/json"]
    assert chat_error["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "AnthropicErrorResponse" in schema["components"]["schemas"]
