"""OpenAI's Responses API with the official `openai` client (`client.responses`) on the real engine (tiny model,
random weights: outputs are short and capped; forced calls and JSON are held to their schemas by the engine)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response

from e2e.conftest import MODEL, Server
from e2e.test_http_errors import wait_idle

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "The forecast", "parameters": WEATHER, "strict": True},
    {"type": "web_search"},  # hosted: left out of what the model sees
]
THING = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}


def test_a_plain_response(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=12, temperature=0.8, top_p=0.9)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status in ("completed", "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 12
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0 and r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.max_output_tokens == 12 and r.temperature == 0.8 and r.top_p == 0.9 and r.store is True
    [message] = r.output
    assert message.type == "message" and message.role == "assistant"
    assert r.output_text == "".join(part.text for part in message.content if part.type == "output_text")


def test_a_streamed_response_sends_openai_events_in_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Tell me a story.", max_output_tokens=24, stream=True))
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) : -1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    joined = "".join(d.delta for d in deltas)
    assert final.output_text == joined
    assert events[-4].text == joined  # type: ignore[union-attr]
    assert events[-2].item.content[0].text == joined  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.output_tokens <= 24
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"  # type: ignore[union-attr]


@pytest.mark.parametrize("choice", [{"type": "function", "name": "get_weather"}, "required"])
def test_a_forced_call_validates_and_its_output_is_answered(client: openai.OpenAI, choice: Any) -> None:
    ask = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    r = client.responses.create(
        model=MODEL, input=ask, tools=TOOLS, tool_choice=choice, max_output_tokens=300, extra_body={"seed": 3}
    )
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and r.status == "completed", r.output
    for call in calls:
        assert call.name == "get_weather" and call.call_id and call.id and call.status == "completed"
        jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert r.tools and len(r.tools) == 2  # echoed as sent, the hosted one too
    call = calls[0]
    history: list[Any] = [
        *ask,
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ]
    answer = client.responses.create(model=MODEL, input=history, tools=TOOLS, max_output_tokens=16)
    assert answer.status in ("completed", "incomplete") and answer.output
    assert answer.usage is not None and answer.usage.input_tokens > r.usage.input_tokens  # type: ignore[union-attr]


def test_a_streamed_forced_call_sends_its_arguments_then_the_item(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL,
            input="Weather in Oslo?",
            tools=TOOLS,
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=300,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")  # type: ignore[union-attr]
    assert done.arguments == deltas  # type: ignore[union-attr]
    jsonschema.validate(json.loads(deltas), WEATHER)
    item = next(e for e in events if e.type == "response.output_item.done").item  # type: ignore[union-attr]
    assert item.type == "function_call" and item.name == "get_weather" and item.arguments == deltas


def test_previous_response_id_carries_the_whole_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", instructions="Be brief.", max_output_tokens=8)
    alone = client.responses.create(model=MODEL, input="What is my name?", max_output_tokens=8)
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.previous_response_id == first.id and second.instructions is None
    assert first.usage and alone.usage and second.usage
    # The context is the first turn's input and output, then the new input (the first turn's instructions are not
    # carried): the same conversation sent whole costs exactly as many tokens. The first turn's output is sampled
    # text, so only this replay, not a sum of the turns' counts, is an exact bound.
    replay = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "My name is Ada."},
            *[item.model_dump(exclude_none=True) for item in first.output],  # type: ignore[misc]
            {"role": "user", "content": "What is my name?"},
        ],
        max_output_tokens=8,
        store=False,
    )
    assert replay.usage and second.usage.input_tokens == replay.usage.input_tokens
    assert second.usage.input_tokens > alone.usage.input_tokens
    third = client.responses.create(
        model=MODEL, input="And again?", previous_response_id=second.id, max_output_tokens=8
    )
    assert third.usage and third.usage.input_tokens > second.usage.input_tokens


def test_stored_responses_are_retrieved_listed_and_deleted(client: openai.OpenAI) -> None:
    items: Any = [
        {"type": "message", "role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "input_text", "text": "One"}], "id": "msg_mine"},
        {"role": "user", "content": "Two"},
    ]
    r = client.responses.create(model=MODEL, input=items, max_output_tokens=8, metadata={"suite": "e2e"})
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"suite": "e2e"}
    listed = client.responses.input_items.list(r.id, order="asc")
    assert [item.id for item in listed.data][1] == "msg_mine" and len(listed.data) == 3
    assert listed.data[2].content[0].text == "Two"  # type: ignore[union-attr]
    newest = client.responses.input_items.list(r.id, limit=1)  # OpenAI's default order: newest first
    assert newest.has_more and newest.data[0].content[0].text == "Two"  # type: ignore[union-attr]
    paged = client.responses.input_items.list(r.id, limit=1, order="asc", after=listed.data[0].id)
    assert [item.id for item in paged.data] == ["msg_mine"]
    client.responses.delete(r.id)  # the SDK returns nothing; the body is checked over HTTP below
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(client.responses.create(model=MODEL, input="x", max_output_tokens=4).id)


def test_delete_answers_openais_body_and_unstored_responses_are_not_found(server: Server) -> None:
    made = httpx.post(
        f"{server.url}/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 4}, timeout=60
    ).json()
    gone = httpx.delete(f"{server.url}/v1/responses/{made['id']}", timeout=10)
    assert gone.status_code == 200 and gone.json() == {"id": made["id"], "object": "response", "deleted": True}
    again = httpx.delete(f"{server.url}/v1/responses/{made['id']}", timeout=10)
    assert again.status_code == 404 and again.json()["error"]["type"] == "not_found_error"
    client = server.openai()
    unstored = client.responses.create(model=MODEL, input="hi", max_output_tokens=4, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="hi", previous_response_id=unstored.id, max_output_tokens=4)


def test_a_json_schema_text_format_validates(client: openai.OpenAI) -> None:
    for seed in (1, 2):
        r = client.responses.create(
            model=MODEL,
            input="Describe a thing.",
            max_output_tokens=64,
            text={"format": {"type": "json_schema", "name": "thing", "schema": THING, "strict": True}},
            extra_body={"seed": seed},
        )
        jsonschema.validate(json.loads(r.output_text), THING)
        assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"


def test_a_codex_shaped_request_answers(server: Server) -> None:
    """What Codex sends (docs: shared notes): developer messages with ids, function tools with strict false, a
    namespace, web_search, reasoning, include, store false, no max_output_tokens; streamed."""
    function = {"type": "function", "name": "shell", "description": "Runs a command", "strict": False}
    function["parameters"] = {"type": "object", "properties": {"command": {"type": "string"}}, "required": []}
    spawn = {"type": "function", "name": "spawn_agent", "description": "Starts an agent", "strict": False}
    spawn["parameters"] = {"type": "object", "properties": {"task": {"type": "string"}}}
    body = {
        "model": MODEL,
        "stream": True,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "id": "msg_dev1",
                "content": [{"type": "input_text", "text": "You are Codex."}],
            },
            {
                "type": "message",
                "role": "developer",
                "id": "msg_dev2",
                "content": [{"type": "input_text", "text": "Skills: none."}],
            },
            {
                "type": "message",
                "role": "user",
                "id": "msg_env",
                "content": [{"type": "input_text", "text": "<env>cwd=/tmp</env>"}],
            },
            {"type": "message", "role": "user", "id": "msg_ask", "content": [{"type": "input_text", "text": "Say hi"}]},
        ],
        "tools": [
            function,
            {"type": "namespace", "name": "multi_agent_v1", "description": "Agents", "tools": [spawn]},
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0196-session",
        "client_metadata": {"originator": "codex_exec"},
    }
    headers = {"accept": "text/event-stream", "originator": "codex_exec", "session-id": "s1"}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/responses", json=body, headers=headers, timeout=300) as r:
        assert r.status_code == 200, r.read()
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] == kind
                events.append(event)
    kinds = [e["type"] for e in events]
    assert "response.output_item.done" in kinds and kinds[-1] in ("response.completed", "response.incomplete")
    final = Response.model_validate(events[-1]["response"])
    assert final.store is False and final.prompt_cache_key == "0196-session" and final.usage is not None
    assert final.max_output_tokens is None and final.usage.output_tokens > 0
    for item in final.output:
        if item.type == "function_call" and item.namespace is not None:
            assert item.namespace == "multi_agent_v1" and item.name == "spawn_agent"


def test_a_batch_runs_responses_lines(client: openai.OpenAI) -> None:
    lines = [
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": MODEL, "input": f"Say {i}.", "max_output_tokens": 4 + i, "ignore_eos": True},
            }
        )
        for i in range(3)
    ]
    file = client.files.create(file=("responses.jsonl", "\n".join(lines).encode()), purpose="batch").id
    batch = client.batches.create(input_file_id=file, endpoint="/v1/responses", completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id is not None
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in output) == ["r0", "r1", "r2"]
    for o in output:
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and body["object"] == "response"
        assert body["usage"]["output_tokens"] == 4 + int(o["custom_id"][1:])
        # Stored (the default), as the key that queued it: readable afterwards.
        assert client.responses.retrieve(body["id"]).id == body["id"]


def test_errors_come_in_openais_envelope(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input=[{"type": "function_call_output", "output": "x"}])  # type: ignore[list-item]
    assert bad.value.body["param"] == "input.0.call_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=0)
    assert bad.value.body["param"] == "max_output_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input="hi", tools=TOOLS, tool_choice={"type": "function", "name": "nope"})
    assert bad.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input="hi", text={"format": {"type": "json_schema", "name": "x"}})  # type: ignore[typeddict-item]
    assert bad.value.body["param"] == "text.format.schema"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_unknown")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")


def test_leaving_mid_stream_aborts_the_engine_request_and_stores_nothing(server: Server) -> None:
    body = {"model": MODEL, "input": "a", "max_output_tokens": 1900, "ignore_eos": True, "stream": True}
    headers = {"X-Request-ID": "responses-leaves"}
    with (
        httpx.Client(base_url=server.url, timeout=60) as http,
        http.stream("POST", "/v1/responses", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        created = next(line for line in r.iter_lines() if line.startswith("data: "))
    assert wait_idle(server) < 10
    gone = [json.loads(line) for line in server.log().splitlines() if '"request.client_gone"' in line]
    mine = [event for event in gone if event.get("request_id") == "responses-leaves"]
    assert mine and mine[0]["completion_tokens"] < 1900, gone
    response_id = json.loads(created.removeprefix("data: "))["response"]["id"]
    assert httpx.get(f"{server.url}/v1/responses/{response_id}", timeout=10).status_code == 404
