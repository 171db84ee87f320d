"""A model that reasons, on the real engine: chat's `reasoning_content`, Responses' reasoning items, Messages'
thinking blocks, each whole and streamed, with the official SDKs.

The model is the tiny reasoning model (`create-tiny --reasoning`): its chat template opens `<think>` in the prompt
(as DeepSeek-R1's does) and its weights close it after about ten sampled tokens; its deployment names vLLM's
`deepseek_r1` parser. Sampling is seeded (chat and Responses take `seed`), so a whole answer and a streamed one
with the same seed are the same tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from e2e.conftest import Server, start_server, stop_server

MODEL = "tiny-think"
HI: list[Any] = [{"role": "user", "content": "Say hi"}]
SAMPLED = {"temperature": 1.0, "max_tokens": 64}
OFF = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def think_server(tmp_path_factory: pytest.TempPathFactory, tiny_reasoning_dir: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("reasoning")
    deployment = {
        "model": str(tiny_reasoning_dir),
        "name": MODEL,
        "engine": {"reasoning_parser": "deepseek_r1", "tool_call_parser": "hermes"},
    }
    srv = start_server(home, "", BITINGLIP_CLUSTER__DEPLOYMENTS="@json " + json.dumps([deployment]))
    yield srv
    stop_server(srv)


@pytest.fixture
def client(think_server: Server) -> openai.OpenAI:
    return think_server.openai()


def test_the_model_says_it_reasons(client: openai.OpenAI) -> None:
    (card,) = [m for m in client.models.list().data if m.id == MODEL]
    assert card.model_extra["capabilities"]["reasoning"] is True


def _answered(client: openai.OpenAI) -> tuple[int, Any]:
    """A seed whose sampled answer closes its reasoning and goes on to answer text, and that answer."""
    for seed in range(12):
        done = client.chat.completions.create(model=MODEL, messages=HI, seed=seed, **SAMPLED)
        if done.choices[0].message.content:
            return seed, done
    pytest.fail("no seed of 12 closed its reasoning within 64 tokens")


def test_chat_answers_with_its_reasoning_apart(client: openai.OpenAI) -> None:
    _, done = _answered(client)
    message = done.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning and "</think>" not in reasoning and message.content
    details = done.usage.completion_tokens_details
    assert details is not None and 0 < details.reasoning_tokens < done.usage.completion_tokens


def test_a_streamed_chat_answer_is_the_whole_one(client: openai.OpenAI) -> None:
    seed, whole = _answered(client)
    stream = client.chat.completions.create(
        model=MODEL, messages=HI, seed=seed, stream=True, stream_options={"include_usage": True}, **SAMPLED
    )
    reasoning, content, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
            content.append(choice.delta.content or "")
    message = whole.choices[0].message
    assert "".join(reasoning) == message.model_extra["reasoning_content"]
    assert "".join(content) == message.content
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens_details.reasoning_tokens


@pytest.mark.parametrize("off", [{"extra_body": OFF}, {"reasoning_effort": "none"}])
def test_thinking_turned_off_answers_without_reasoning(client: openai.OpenAI, off: dict[str, Any]) -> None:
    done = client.chat.completions.create(model=MODEL, messages=HI, seed=0, **SAMPLED, **off)
    message = done.choices[0].message
    assert (message.model_extra or {}).get("reasoning_content") is None and message.content
    assert done.usage.completion_tokens_details is None


def test_a_forced_call_comes_after_the_reasoning(client: openai.OpenAI) -> None:
    """The engine holds the call's constraint back until the reasoning has ended (the deployment's parser is an
    engine argument too), then the call is made whole."""
    tool = {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    done = client.chat.completions.create(
        model=MODEL, messages=HI, tools=[tool], tool_choice="required", seed=0, temperature=1.0, max_tokens=200
    )
    message = done.choices[0].message
    assert message.model_extra["reasoning_content"], message
    assert message.tool_calls and json.loads(message.tool_calls[0].function.arguments)["city"] in ("Paris", "Oslo")


def test_responses_put_the_reasoning_in_its_own_item(client: openai.OpenAI) -> None:
    seed, _ = _answered(client)
    kwargs: dict[str, Any] = {"model": MODEL, "input": "Say hi", "max_output_tokens": 64, "temperature": 1.0}
    whole = client.responses.create(**kwargs, extra_body={"seed": seed})
    assert [item.type for item in whole.output] == ["reasoning", "message"], whole.output
    thought = whole.output[0]
    assert thought.id.startswith("rs_") and thought.content and thought.content[0].type == "reasoning_text"
    assert thought.content[0].text and whole.output_text
    assert 0 < whole.usage.output_tokens_details.reasoning_tokens < whole.usage.output_tokens

    events = list(client.responses.create(**kwargs, stream=True, extra_body={"seed": seed}))
    kinds = [event.type for event in events]
    deltas = "".join(event.delta for event in events if event.type == "response.reasoning_text.delta")
    (done,) = [event for event in events if event.type == "response.reasoning_text.done"]
    assert deltas == done.text == thought.content[0].text
    # The reasoning item is opened, filled and closed before the message is opened.
    added = [event.item.type for event in events if event.type == "response.output_item.added"]
    assert added == ["reasoning", "message"]
    first_message = kinds.index("response.output_text.delta")
    assert kinds.index("response.reasoning_text.done") < first_message
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1]
    # Cut by its own max_output_tokens or not, as the whole answer was.
    assert final.type == f"response.{whole.status}" and whole.status in ("completed", "incomplete")
    assert (
        final.response.usage.output_tokens_details.reasoning_tokens
        == whole.usage.output_tokens_details.reasoning_tokens
    )


def test_messages_put_the_reasoning_in_a_thinking_block(think_server: Server) -> None:
    claude = anthropic.Anthropic(base_url=think_server.url, api_key="unused", max_retries=0, timeout=120)
    kwargs: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": HI, "extra_body": {"temperature": 1.0}}
    whole = claude.messages.create(**kwargs, thinking={"type": "enabled", "budget_tokens": 1024})
    assert whole.content[0].type == "thinking" and whole.content[0].thinking
    assert {block.type for block in whole.content[1:]} <= {"text"}

    with claude.messages.stream(**kwargs, thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        events = list(stream)
        final = stream.get_final_message()
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts[0] == "thinking" and set(starts[1:]) <= {"text"}
    thinking = "".join(
        e.delta.thinking for e in events if e.type == "content_block_delta" and e.delta.type == "thinking_delta"
    )
    assert thinking and final.content[0].type == "thinking" and final.content[0].thinking == thinking

    off = claude.messages.create(**kwargs, thinking={"type": "disabled"})
    assert [block.type for block in off.content] == ["text"] and off.content[0].text


def test_an_answer_sent_back_with_its_reasoning_is_taken(client: openai.OpenAI) -> None:
    _, done = _answered(client)
    message = done.choices[0].message.model_dump(exclude_none=True)
    assert message["reasoning_content"]
    history = [*HI, message, {"role": "user", "content": "And again"}]
    again = client.chat.completions.create(model=MODEL, messages=history, seed=1, **SAMPLED)
    # The earlier reasoning is not shown to the model: the prompt is the one without it.
    without = [*HI, {k: v for k, v in message.items() if k != "reasoning_content"}, history[-1]]
    plain = client.chat.completions.create(model=MODEL, messages=without, seed=1, **SAMPLED)
    assert again.usage.prompt_tokens == plain.usage.prompt_tokens
