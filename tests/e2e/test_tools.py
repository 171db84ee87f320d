"""Tool calls with the official openai client on the real engine (tiny model, hermes format, random weights).

A forced call (`required`, a named function) is held to the tool's schema by a structural tag, so with bounded
schemas the arguments validate whatever the weights say; these tests rely on that, for several seeds.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from e2e.conftest import MODEL, Server

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
        "metric": {"type": "boolean"},
    },
    "required": ["city", "days", "metric"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "maximum": 99}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Adds two numbers", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]
WEATHER_CHOICE: Any = {"type": "function", "function": {"name": "get_weather"}}


def check_call(name: str, arguments: str) -> dict[str, Any]:
    value = json.loads(arguments)
    jsonschema.validate(value, SCHEMAS[name])
    return dict(value)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_named_tool_choice_gives_arguments_that_validate(client: openai.OpenAI, seed: int) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=WEATHER_CHOICE, max_tokens=300, seed=seed
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function" and calls[0].id
    assert calls[0].function.name == "get_weather"
    check_call("get_weather", calls[0].function.arguments)
    assert choice.message.content is None


def collect_stream(stream: Any) -> tuple[dict[int, dict[str, Any]], list[Any], str]:
    """Stream deltas joined as OpenAI's clients do: per call index, id and name first, arguments appended."""
    calls: dict[int, dict[str, Any]] = {}
    finishes, content = [], ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": None, "name": None, "arguments": "", "first": part})
            if part.id:
                assert call["id"] is None, "a call's id is sent once"
                call["id"] = part.id
            if part.function and part.function.name:
                call["name"] = part.function.name
            if part.function and part.function.arguments:
                assert call["name"] is not None, "the name comes before the arguments"
                call["arguments"] += part.function.arguments
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    return calls, finishes, content


def test_a_named_tool_choice_streams_the_name_first_then_argument_fragments(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=WEATHER_CHOICE, max_tokens=300, seed=4, stream=True
    )
    calls, finishes, content = collect_stream(stream)
    assert finishes == ["tool_calls"] and content == ""
    assert list(calls) == [0]
    first = calls[0]["first"]
    assert first.id and first.type == "function" and first.function.name == "get_weather"
    check_call("get_weather", calls[0]["arguments"])


@pytest.mark.parametrize("stream", [False, True])
def test_required_makes_at_least_one_valid_call(client: openai.OpenAI, stream: bool) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required"}
    for seed in (5, 6):
        if stream:
            calls, finishes, _ = collect_stream(
                client.chat.completions.create(**kwargs, max_tokens=600, seed=seed, stream=True)
            )
            made = [(c["name"], c["arguments"], c["id"]) for _, c in sorted(calls.items())]
            assert finishes == ["tool_calls"]
        else:
            r = client.chat.completions.create(**kwargs, max_tokens=600, seed=seed)
            assert r.choices[0].finish_reason == "tool_calls"
            made = [(c.function.name, c.function.arguments, c.id) for c in r.choices[0].message.tool_calls or []]
        assert made
        for name, arguments, call_id in made:
            check_call(name, arguments)
            assert call_id
        assert len({call_id for _, _, call_id in made}) == len(made)


def test_parallel_tool_calls_false_makes_exactly_one_call(client: openai.OpenAI) -> None:
    for seed in (7, 8, 9):
        r = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=300,
            seed=seed,
        )
        calls = r.choices[0].message.tool_calls or []
        assert len(calls) == 1
        check_call(calls[0].function.name, calls[0].function.arguments)


def test_the_tool_call_loop_carries_the_result_back_to_the_model(server: Server, client: openai.OpenAI) -> None:
    """The loop a client runs: the model calls a tool, the client runs it and sends the result back."""
    messages: list[Any] = list(ASK)
    r = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice=WEATHER_CHOICE, max_tokens=300, seed=1
    )
    message = r.choices[0].message
    messages.append(message)  # the assistant turn as the client got it, tool_calls included
    call = (message.tool_calls or [])[0]
    args = check_call(call.function.name, call.function.arguments)
    result = f"Sunny in {args['city']} for {args['days']} days"
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    final = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, max_tokens=8, seed=1, extra_body={"ignore_eos": True}
    )
    assert final.choices[0].finish_reason == "length"  # auto on random weights: text, not another call
    assert final.choices[0].message.tool_calls is None and final.choices[0].message.content
    # The result reached the prompt: the rendered prompt carries it, and is what the request was charged for.
    history = [m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in messages]
    rendered = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "messages": history, "tools": TOOLS})
    assert rendered.status_code == 200, rendered.text
    assert final.usage is not None and rendered.json()["count"] == final.usage.prompt_tokens
    text = httpx.post(f"{server.url}/detokenize", json={"model": MODEL, "tokens": rendered.json()["tokens"]}).json()
    assert f"<tool_response>\n{result}\n</tool_response>" in text["prompt"]
    assert f'<tool_call>\n{{"name": "get_weather", "arguments": {json.dumps(args)}}}' in text["prompt"]
    assert '"name": "add"' in text["prompt"]  # the tools are listed for the model


def test_tool_choice_none_renders_the_tools_but_makes_no_call(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=6, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "length"
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=6, extra_body={"ignore_eos": True})
    assert r.usage is not None and plain.usage is not None and r.usage.prompt_tokens > plain.usage.prompt_tokens + 50


BAD_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}
F = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [BAD_TOOL]}, "tools.0.function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, None),
        ({"tools": [F, F]}, "tools.1.function.name"),
        ({"tools": [F], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [F], "tool_choice": "always"}, "tool_choice"),
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "two words"}}]}, "tools.0.function.name"),
        ({"tools": [F], "response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{no"}}]},
                ]
            },
            "messages.1.tool_calls.0.function.arguments",
        ),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]}, "messages.1.tool_call_id"),
    ],
)
def test_bad_tools_are_a_400_naming_the_parameter(
    server: Server, client: openai.OpenAI, extra: dict[str, Any], param: str | None
) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4} | extra
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == (param or "tools.0.function.parameters"), error
    with pytest.raises(openai.BadRequestError):  # the official client raises the matching class
        client.chat.completions.create(**body)
