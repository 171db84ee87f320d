"""The Responses API's translation to chat (input items, namespace tools, hosted tools, text.format, the chain of
earlier turns), and its routes over the scripted engine: stored responses, their owners, the stream's events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from gateway_support import Gateway, build_gateway
from litestar.testing import TestClient
from openai.types.responses import Response

from bitinglip.core import InvalidInput, Unavailable
from bitinglip.gateway import KeyCreate
from bitinglip.gateway.protocol.chat import NamedToolChoice
from bitinglip.gateway.protocol.responses import ResponsesRequest
from bitinglip.gateway.response_store import Turn
from bitinglip.gateway.serving.responses_request import translate
from doubles import ScriptedEngine


def request(**fields: Any) -> ResponsesRequest:
    return msgspec.convert({"model": "m", **fields}, ResponsesRequest)


def roles(req: ResponsesRequest, history: list[Turn] | None = None) -> list[tuple[str, Any]]:
    return [(m.role, m.content) for m in translate(req, history).chat.messages or []]


FUNCTION = {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}, "strict": False}


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    assert roles(request(input="hi", instructions="be brief")) == [("system", "be brief"), ("user", "hi")]


def test_items_become_chat_messages_calls_and_tool_turns() -> None:
    items = [
        {"type": "message", "role": "developer", "id": "msg_1", "content": [{"type": "input_text", "text": "rules"}]},
        {"role": "system", "content": "more rules"},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},  # left out
        {"role": "assistant", "content": [{"type": "output_text", "text": "let me look", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"x": 1}'},
        {"type": "function_call", "call_id": "c2", "name": "spawn", "namespace": "agents", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]},
    ]
    tr = translate(request(input=items, instructions="first"))
    messages = tr.chat.messages or []
    # Leading system and developer messages (and the instructions, first) are one system prompt.
    assert [(m.role, m.content) for m in messages] == [
        ("system", "first\n\nrules\n\nmore rules"),
        ("user", "ab"),
        ("assistant", "let me look"),
        ("tool", "done"),
        ("tool", "ok"),
    ]
    calls = messages[2].tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("c1", "shell", '{"x": 1}'),
        ("c2", "agents__spawn", "{}"),
    ]
    assert [messages[3].tool_call_id, messages[4].tool_call_id] == ["c1", "c2"]
    assert tr.message_paths == ["instructions", "input.2", "input.4", "input.7", "input.8"]
    # Every item is kept for input_items, with an id (its own where it had one).
    assert tr.items[0]["id"] == "msg_1" and all(item.get("id") for item in tr.items)
    assert tr.items[2]["content"][1]["text"] == "b" and tr.items[3]["type"] == "reasoning"


def test_a_call_without_text_before_it_is_an_assistant_turn_of_its_own() -> None:
    items = [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "x"},
        {"type": "function_call", "call_id": "c2", "name": "shell", "arguments": "{}"},
    ]
    messages = translate(request(input=items)).chat.messages or []
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert [len(m.tool_calls or []) for m in messages] == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "function_call_output", "output": "x"}, "input.0.call_id"),
        ({"type": "function_call", "call_id": "c", "name": "f"}, "input.0.arguments"),
        ({"role": "user", "content": 3}, "input.0.content"),
        ({"role": "critic", "content": "x"}, "input.0.role"),
        ({"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}, "input.0.content.0.type"),
        ({"type": "item_reference", "id": "msg_1"}, "input.0.type"),
        ("just text", "input.0"),
    ],
)
def test_a_bad_item_is_refused_naming_its_place(item: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        translate(request(input=[item]))
    assert refused.value.param == param


def test_namespace_tools_are_flattened_and_hosted_tools_left_out() -> None:
    spawn = {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}
    tools = [
        FUNCTION,
        {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [spawn]},
        {"type": "web_search", "external_web_access": False},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "mcp", "server_label": "x"},
    ]
    tr = translate(request(input="hi", tools=tools, tool_choice="required"))
    shown = [tool.function.name for tool in tr.chat.tools or []]
    assert shown == ["shell", "multi_agent_v1__spawn_agent"]
    assert tr.names["multi_agent_v1__spawn_agent"] == ("multi_agent_v1", "spawn_agent")
    assert tr.dropped == ["web_search", "file_search", "mcp"]
    assert tr.tool_paths == ["tools.0", "tools.1.tools.0"] and tr.chat.tool_choice == "required"
    # An error on a chat tool names the tool where the request has it.
    assert tr.param("tools.1.function.name") == "tools.1.tools.0.name"
    assert tr.param("messages.0.content") == "input" and tr.param("max_tokens") == "max_output_tokens"


def test_tool_choice_names_a_function_and_only_hosted_tools_mean_no_tools() -> None:
    spawn = {"type": "function", "name": "spawn_agent"}
    tools = [FUNCTION, {"type": "namespace", "name": "agents", "tools": [spawn]}]
    named = translate(request(input="x", tools=tools, tool_choice={"type": "function", "name": "shell"})).chat
    assert isinstance(named.tool_choice, NamedToolChoice) and named.tool_choice.function.name == "shell"
    # A namespace's function by its own name (unambiguous), or with its namespace.
    for choice in (
        {"type": "function", "name": "spawn_agent"},
        {"type": "function", "name": "spawn_agent", "namespace": "agents"},
    ):
        chosen = translate(request(input="x", tools=tools, tool_choice=choice)).chat.tool_choice
        assert isinstance(chosen, NamedToolChoice) and chosen.function.name == "agents__spawn_agent"
    hosted = translate(request(input="x", tools=[{"type": "web_search"}], tool_choice="auto")).chat
    assert hosted.tools is None and hosted.tool_choice is None
    for bad in ("sometimes", {"type": "web_search"}, {"type": "allowed_tools", "tools": []}):
        with pytest.raises(InvalidInput) as refused:
            translate(request(input="x", tools=tools, tool_choice=bad))
        assert refused.value.param == "tool_choice"
    with pytest.raises(InvalidInput) as refused:
        translate(request(input="x", tools=[{"type": "namespace", "name": "n", "tools": "no"}]))
    assert refused.value.param == "tools.0.tools"


def test_text_format_maps_to_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    chat = translate(request(input="x", text={"format": fmt})).chat
    assert chat.response_format is not None and chat.response_format.type == "json_schema"
    assert chat.response_format.json_schema is not None
    assert chat.response_format.json_schema.schema == schema and chat.response_format.json_schema.name == "thing"
    obj = translate(request(input="x", text={"format": {"type": "json_object"}})).chat.response_format
    assert obj is not None and obj.type == "json_object"
    assert translate(request(input="x", text={"format": {"type": "text"}})).chat.response_format is None
    with pytest.raises(InvalidInput) as refused:
        translate(request(input="x", text={"format": {"type": "json_schema", "name": "x"}}))
    assert refused.value.param == "text.format.schema"


def test_sampling_fields_map_to_chat_and_unknown_fields_are_accepted() -> None:
    req = request(
        input="x",
        max_output_tokens=9,
        temperature=0.5,
        top_p=0.7,
        parallel_tool_calls=False,
        store=False,
        include=["reasoning.encrypted_content"],
        prompt_cache_key="k",
        client_metadata={"a": 1},
        reasoning={"summary": "auto"},
        truncation="auto",
        service_tier="auto",
        background=False,
        something_new=[1, 2],
    )
    chat = translate(req).chat
    assert (chat.max_completion_tokens, chat.temperature, chat.top_p) == (9, 0.5, 0.7)
    assert chat.parallel_tool_calls is False and chat.asked_max_tokens() == 9


def test_the_chain_of_earlier_turns_comes_before_the_new_input_without_their_instructions() -> None:
    first = Turn(
        id="resp_1",
        input=[{"type": "message", "role": "user", "id": "m1", "content": [{"type": "input_text", "text": "one"}]}],
        output=[
            {
                "type": "message",
                "id": "o1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "two", "annotations": [], "logprobs": []}],
            },
        ],
    )
    second = Turn(
        id="resp_2",
        input=[{"type": "message", "role": "user", "id": "m2", "content": [{"type": "input_text", "text": "three"}]}],
        output=[
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "c1",
                "name": "spawn",
                "namespace": "ns",
                "arguments": "{}",
                "status": "completed",
            },
        ],
    )
    req = request(input=[{"type": "function_call_output", "call_id": "c1", "output": "ran"}], instructions="now")
    tr = translate(req, [first, second])
    messages = tr.chat.messages or []
    assert [(m.role, m.content) for m in messages] == [
        ("system", "now"),
        ("user", "one"),
        ("assistant", "two"),
        ("user", "three"),
        ("assistant", None),
        ("tool", "ran"),
    ]
    assert (messages[4].tool_calls or [])[0].function.name == "ns__spawn"
    # Only this request's own items are its input items.
    assert [item["type"] for item in tr.items] == ["function_call_output"]


# -- the routes, over the scripted engine


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Gateway:
    return build_gateway(ScriptedEngine(), tmp_path, auth=True, db_url=db_url)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[TestClient]:
    with TestClient(gateway.app) as c:
        yield c


def bearer(client: TestClient, gateway: Gateway, scope: str = "inference") -> dict[str, str]:
    made = client.blocking_portal.call(gateway.keys.create, KeyCreate(name=scope, scope=scope))  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {made.key}"}


def test_a_key_reaches_only_its_own_stored_responses_and_an_admin_key_all(client: TestClient, gateway: Gateway) -> None:
    alice, bob, admin = bearer(client, gateway), bearer(client, gateway), bearer(client, gateway, "admin")
    made = client.post("/v1/responses", json={"model": "fake", "input": "hi", "max_output_tokens": 2}, headers=alice)
    assert made.status_code == 200, made.text
    Response.model_validate(made.json())
    rid = made.json()["id"]
    for path in (f"/v1/responses/{rid}", f"/v1/responses/{rid}/input_items"):
        assert client.get(path, headers=alice).status_code == 200
        assert client.get(path, headers=admin).status_code == 200
        theirs = client.get(path, headers=bob)
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "response_not_found"
    follow = {"model": "fake", "input": "more", "previous_response_id": rid, "max_output_tokens": 2}
    assert client.post("/v1/responses", json=follow, headers=bob).status_code == 404
    assert client.post("/v1/responses", json=follow, headers=alice).status_code == 200
    assert client.delete(f"/v1/responses/{rid}", headers=bob).status_code == 404
    assert client.delete(f"/v1/responses/{rid}", headers=admin).json() == {
        "id": rid,
        "object": "response",
        "deleted": True,
    }
    assert client.get(f"/v1/responses/{rid}", headers=alice).status_code == 404


def test_the_stream_is_openais_events_and_what_it_stores_is_what_it_sent(client: TestClient, gateway: Gateway) -> None:
    key = bearer(client, gateway)
    body = {"model": "fake", "input": "hi", "stream": True, "metadata": {"k": "v"}}
    r = client.post("/v1/responses", json=body, headers=key)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b]
    events = []
    for block in blocks:
        event_line, data_line = block.split("\n")
        event = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert Response.model_validate(final).output_text == "Hello there friend"
    stored = client.get(f"/v1/responses/{final['id']}", headers=key).json()
    assert stored == final


def test_background_needs_store_and_cancel_says_what_it_can(client: TestClient, gateway: Gateway) -> None:
    key = bearer(client, gateway)
    base = {"model": "fake", "input": "hi", "max_output_tokens": 2}
    refused = client.post("/v1/responses", json={**base, "background": True, "store": False}, headers=key)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "background"
    # Background work runs to its end before it is answered: cancelling it then leaves it as it is.
    made = client.post("/v1/responses", json={**base, "background": True}, headers=key).json()
    assert made["background"] is True and made["status"] in ("completed", "incomplete")
    assert client.post(f"/v1/responses/{made['id']}/cancel", headers=key).json() == made
    plain = client.post("/v1/responses", json=base, headers=key).json()
    cancel = client.post(f"/v1/responses/{plain['id']}/cancel", headers=key)
    assert cancel.status_code == 400 and cancel.json()["error"]["type"] == "invalid_request_error"
    assert client.post("/v1/responses/resp_nope/cancel", headers=key).status_code == 404


@pytest.mark.parametrize("stream", [False, True])
def test_only_the_requests_own_limit_makes_a_response_incomplete(tmp_path: Path, stream: bool) -> None:
    """The server's ceiling (here 2 tokens) cuts every answer; a request that named no limit, or more than the
    ceiling, is answered `completed` (Codex fails a turn on `incomplete`); one cut by its own limit is not."""
    with TestClient(build_gateway(ScriptedEngine(), tmp_path, max_output_tokens=2).app) as client:
        for asked, status in ((None, "completed"), (50, "completed"), (2, "incomplete")):
            body: dict[str, Any] = {"model": "fake", "input": "hi", "stream": stream}
            if asked is not None:
                body["max_output_tokens"] = asked
            r = client.post("/v1/responses", json=body)
            assert r.status_code == 200, r.text
            final = json.loads(r.text.split("data: ")[-1]) if stream else r.json()
            response = final["response"] if stream else final
            assert response["status"] == status and response["usage"]["output_tokens"] == 2, (asked, response)
            assert response["output"][0]["status"] == status
            assert (response["incomplete_details"] is None) == (status == "completed")


class FailingEngine(ScriptedEngine):
    """Sends its first word, then fails as a dying engine does."""

    async def generate(  # type: ignore[override]
        self, prompt_ids: list[int], prompt_text: str | None, params: object, request_id: str, priority: int = 0
    ) -> AsyncIterator[Any]:
        async for output in super().generate(prompt_ids, prompt_text, params, request_id, priority):
            yield output
            raise Unavailable("the engine stopped", code="engine_dead")


def test_an_error_after_the_start_is_an_error_event_then_response_failed(tmp_path: Path) -> None:
    with TestClient(build_gateway(FailingEngine(), tmp_path).app) as client:
        r = client.post("/v1/responses", json={"model": "fake", "input": "hi", "stream": True})
        assert r.status_code == 200
        events = [json.loads(block.split("data: ", 1)[1]) for block in r.text.split("\n\n") if block]
        kinds = [e["type"] for e in events]
        assert kinds[-2:] == ["error", "response.failed"] and "response.output_text.delta" in kinds
        assert events[-2]["code"] == "engine_dead" and events[-2]["message"] == "the engine stopped"
        failed = events[-1]["response"]
        assert failed["status"] == "failed" and failed["error"] == {
            "code": "server_error",
            "message": "the engine stopped",
        }
        assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == "Hello"
        Response.model_validate(failed)
        # What failed is stored too, as it was sent.
        assert client.get(f"/v1/responses/{failed['id']}").json()["status"] == "failed"
