"""Anthropic's Messages API with the official `anthropic` SDK on the real engine (tiny model, random weights).

The tiny model seldom stops by itself, so every request asks for few tokens; forced tool calls are held to their
(bounded) schemas by the engine's constraint, so their `input` validates whatever the weights say.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from e2e.conftest import MODEL, Server, start_server, stop_server

PLACE = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [{"name": "get_weather", "description": "The forecast", "input_schema": PLACE}]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]
HI: list[Any] = [{"role": "user", "content": "Say hi"}]
# A whole call in the hermes format (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`) takes about a hundred
# of the tiny tokenizer's tokens: room for it, the one request here that needs more than a few.
CALL_TOKENS = 200


@pytest.fixture
def claude(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_a_plain_message(claude: anthropic.Anthropic) -> None:
    # This SDK has no sampling arguments of its own any more: they go in the body as Anthropic's API takes them.
    sampling = {"temperature": 0.7, "top_p": 0.9, "top_k": 20}
    m = claude.messages.create(model=MODEL, max_tokens=8, messages=HI, extra_body=sampling)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_") and m.model == MODEL
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert [block.type for block in m.content] == ["text"]
    assert 0 < m.usage.input_tokens and 0 < m.usage.output_tokens <= 8
    assert m.usage.cache_creation_input_tokens == 0 and m.usage.cache_read_input_tokens == 0


def test_a_streamed_message_sends_anthropics_events_in_order(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model=MODEL, max_tokens=16, messages=HI) as stream:
        # The SDK's own helper events ("text", ...) left out; it drops pings (test_a_request_shaped_like_claude_codes
        # reads the raw events).
        events = [event for event in stream if event.type.startswith(("message_", "content_block_"))]
        final = stream.get_final_message()
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    blocks = [k for k in kinds if k.startswith("content_block")]
    assert blocks[0] == "content_block_start" and blocks[-1] == "content_block_stop"
    assert set(blocks[1:-1]) <= {"content_block_delta"}
    deltas = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert deltas == text_of(final)
    start = events[0]
    assert start.type == "message_start" and start.message.usage.input_tokens == final.usage.input_tokens
    assert final.stop_reason in ("end_turn", "max_tokens") and 0 < final.usage.output_tokens <= 16


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_tool_call_then_its_result(claude: anthropic.Anthropic, choice: Any, stream: bool) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "tools": TOOLS, "tool_choice": choice, "extra_body": {"temperature": 0}}
    if stream:
        with claude.messages.stream(max_tokens=CALL_TOKENS, messages=ASK, **kwargs) as s:
            m = s.get_final_message()
    else:
        m = claude.messages.create(max_tokens=CALL_TOKENS, messages=ASK, **kwargs)
    assert m.stop_reason == "tool_use", m
    calls = [block for block in m.content if block.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].id
    jsonschema.validate(calls[0].input, PLACE)
    args: dict[str, Any] = dict(calls[0].input)  # type: ignore[call-overload]
    # The client runs the tool and answers in a tool_result turn; the model goes on from there.
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in m.content]},
    ]

    def answered(result: str) -> list[Any]:
        content = [{"type": "tool_result", "tool_use_id": calls[0].id, "content": [{"type": "text", "text": result}]}]
        return [*history, {"role": "user", "content": content}]

    result = f"Sunny in {args['city']} for {args['days']} days"
    final = claude.messages.create(model=MODEL, max_tokens=8, messages=answered(result), tools=TOOLS)
    assert final.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # The result reached the prompt: counted as the create counted it, longer than an empty result.
    counted = claude.messages.count_tokens(model=MODEL, messages=answered(result), tools=TOOLS).input_tokens
    empty = claude.messages.count_tokens(model=MODEL, messages=answered(""), tools=TOOLS).input_tokens
    assert counted == final.usage.input_tokens and counted > empty


def test_a_stop_sequence_ends_the_message_and_is_named(claude: anthropic.Anthropic) -> None:
    greedy = {"temperature": 0}  # the same text each time: a stop sequence taken from it is met again
    text = text_of(claude.messages.create(model=MODEL, max_tokens=16, messages=HI, extra_body=greedy))
    at = next(i for i in range(2, len(text) - 1) if text[i : i + 2].isascii() and text[i : i + 2].strip())
    stop = text[at : at + 2]
    m = claude.messages.create(model=MODEL, max_tokens=16, messages=HI, stop_sequences=[stop], extra_body=greedy)
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", stop)
    assert text_of(m) == text[: text.index(stop)]
    with claude.messages.stream(
        model=MODEL, max_tokens=16, messages=HI, stop_sequences=["\x00never", stop], extra_body=greedy
    ) as s:
        streamed = s.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence, text_of(streamed)) == ("stop_sequence", stop, text_of(m))


def test_system_messages_inside_messages_join_the_system_prompt(claude: anthropic.Anthropic) -> None:
    messages: list[Any] = [*HI, {"role": "system", "content": "Answer in one word."}]
    m = claude.messages.create(model=MODEL, max_tokens=8, system="You are terse.", messages=messages)
    without = claude.messages.count_tokens(model=MODEL, system="You are terse.", messages=HI).input_tokens
    assert m.usage.input_tokens > without


def test_count_tokens_equals_the_create_input_tokens(claude: anthropic.Anthropic) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "system": [{"type": "text", "text": "You are a helpful assistant.", "cache_control": {"type": "ephemeral"}}],
        "messages": [*ASK, {"role": "assistant", "content": "Let me look."}, {"role": "user", "content": "Go on."}],
        "tools": TOOLS,
    }
    counted = claude.messages.count_tokens(**body).input_tokens
    made = claude.messages.create(max_tokens=8, **body)
    assert counted == made.usage.input_tokens > 0


def test_a_max_tokens_past_the_context_is_clamped(server: Server, claude: anthropic.Anthropic) -> None:
    """Claude Code asks for 32,000 tokens whatever the context: cut to the room left, said in a header."""
    context = httpx.get(f"{server.url}/v1/models/{MODEL}").json()["max_model_len"]
    words = "alpha beta gamma delta " * 40
    per = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": words}]).input_tokens
    text = words * max(1, (context - 40) // per)  # a prompt that leaves a small room
    prompt: list[Any] = [{"role": "user", "content": text}]
    room = context - claude.messages.count_tokens(model=MODEL, messages=prompt).input_tokens
    assert 0 < room <= per + 40
    raw = claude.messages.with_raw_response.create(model=MODEL, max_tokens=32000, messages=prompt)
    assert raw.headers["x-max-tokens-clamped"] == f"32000->{room}"
    m = raw.parse()
    assert m.usage.output_tokens <= room and m.stop_reason in ("max_tokens", "end_turn")


def test_errors_come_in_anthropics_envelope(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model=MODEL, max_tokens=8, messages=HI, extra_body={"temperature": 1.5})
    assert bad.value.body["type"] == "error"  # type: ignore[index]
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "temperature" in bad.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as wrong_type:
        claude.messages.create(model=MODEL, max_tokens="many", messages=HI)  # type: ignore[arg-type]
    assert wrong_type.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in wrong_type.value.body["error"]["message"]  # type: ignore[index]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": [image]}])
    assert "messages.0.content.0" in refused.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def _tool(i: int) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "The absolute path of the file to work on"},
            "limit": {"type": "integer", "description": "How many lines to read at most"},
            "replace_all": {"type": "boolean", "default": False},
        },
        "required": ["path"],
        "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#",
    }
    return {
        "name": f"Tool{i}",
        "description": f"Tool number {i}: " + "Does one thing well. " * 8,
        "input_schema": schema,
    }


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    """A server set up for coding agents: a context for their long prompts, a ceiling on what each answer makes
    (Claude Code asks for 32,000 tokens every time), and Claude's model names mapped to the tiny model."""
    srv = start_server(
        tmp_path_factory.mktemp("agents"),
        tiny_model_dir,
        BITINGLIP_CLUSTER__ENGINE__MAX_MODEL_LEN="24576",
        BITINGLIP_GATEWAY__MAX_OUTPUT_TOKENS="32",
        BITINGLIP_GATEWAY__MODEL_ALIASES='{ "claude-*" = "tiny" }',
    )
    yield srv
    stop_server(srv)


def test_a_request_shaped_like_claude_codes(agent_server: Server) -> None:
    """What Claude Code sends (its beta header, system blocks with cache_control, a system message mid-
    conversation, thinking, output_config, context_management, metadata, 24 tools, max_tokens 32000), streamed,
    under a Claude model name."""
    prose = "You are an interactive CLI tool that helps users with software engineering tasks. "
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": "user_abc_account__session_1"},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197; cc_entrypoint=cli"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": prose * 36, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>The date is today.</system-reminder>"},
                    {"type": "text", "text": "Say hi", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "# Environment\n" + prose * 36},
        ],
        "tools": [_tool(i) for i in range(24)],
    }
    headers = {
        "x-api-key": "unused",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
        "prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,effort-2025-11-24",
        "x-app": "cli",
    }
    url = f"{agent_server.url}/v1/messages?beta=true"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["x-max-tokens-clamped"] == "32000->32"  # the server's ceiling
        lines = list(r.iter_lines())
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in names and "error" not in names
    assert names.count("content_block_start") == names.count("content_block_stop") >= 1
    start = json.loads(lines[lines.index("event: message_start") + 1].removeprefix("data: "))
    assert start["message"]["model"] == "claude-sonnet-4-5"  # the name the client sent, not the alias's model
    # The prompt is long (a coding agent's), and count_tokens agrees with what the request was charged.
    counted = httpx.post(f"{agent_server.url}/v1/messages/count_tokens", json=body, headers=headers, timeout=60)
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] == start["message"]["usage"]["input_tokens"] > 2048
