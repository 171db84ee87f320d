"""The official openai client against the real server and engine."""

from __future__ import annotations

import re

import openai
import pytest

from e2e.conftest import EMBEDDING_MODEL, MODEL

HELLO = [{"role": "user", "content": "Say hello."}]


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL, EMBEDDING_MODEL]


def test_chat_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, extra_body={"ignore_eos": True})
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_text_completion(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="def main():", max_tokens=5, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "length"


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


def test_completion_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    kwargs = {
        "model": MODEL,
        "prompt": "import os\n",
        "max_tokens": 10,
        "temperature": 0.0,
        "extra_body": {"ignore_eos": True},
    }
    whole = client.completions.create(**kwargs).choices[0].text  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)  # type: ignore[call-overload]
    assert streamed == whole


def test_n_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, n=3, temperature=1.0, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage is not None and r.usage.completion_tokens <= 12


def test_same_seed_same_output_other_seed_differs(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        r = client.completions.create(
            model=MODEL, prompt="class A:", max_tokens=24, temperature=1.0, seed=seed, extra_body={"ignore_eos": True}
        )
        return r.choices[0].text

    first = run(1234)
    assert run(1234) == first
    assert run(4321) != first


def test_stop_sequence_cuts_the_output(client: openai.OpenAI) -> None:
    kwargs = {
        "model": MODEL,
        "prompt": "for i in range(3):",
        "max_tokens": 30,
        "temperature": 1.0,
        "seed": 99,
        "extra_body": {"ignore_eos": True},
    }
    full = client.completions.create(**kwargs).choices[0].text  # type: ignore[call-overload]
    stop = next(
        (
            full[i : i + 2]
            for i in range(4, len(full) - 2)
            if full[i : i + 2].strip() == full[i : i + 2] and "\ufffd" not in full[i : i + 2]
        ),
        None,
    )
    assert stop, f"no usable stop string in {full!r}"
    cut = client.completions.create(stop=[stop], **kwargs).choices[0]  # type: ignore[call-overload]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def _valid(text: str) -> str:
    """Text as both sides can show it. Random weights emit anything: a lone piece of a UTF-8 character (U+FFFD in
    the text, "bytes:\\xe2" in logprobs) or a special token (named in logprobs, left out of the text)."""
    return re.sub(r"<\|[A-Za-z0-9_]+\|>", "", text).replace("\ufffd", "")


def test_logprobs_chat_and_completion(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=4, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True}
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 4
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    # Random weights can emit a lone piece of a UTF-8 character: the text shows U+FFFD where logprobs name the
    # token by its bytes ("bytes:\\xe2"), so compare what is valid text on both sides.
    assert all(t.bytes for t in content if t.token)
    assert _valid("".join(t.token for t in content if not t.token.startswith("bytes:"))) == _valid(
        r.choices[0].message.content or ""
    )
    c = client.completions.create(model=MODEL, prompt="x = ", max_tokens=3, logprobs=2, extra_body={"ignore_eos": True})
    lp = c.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == 3 and len(lp.top_logprobs or []) == 3
    assert _valid("".join(t for t in lp.tokens or [] if not t.startswith("bytes:"))) == _valid(c.choices[0].text)


def test_sampling_parameters_are_accepted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_completion_tokens=3,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        extra_body={"top_k": 20, "ignore_eos": True},
    )
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_errors_surface_as_openai_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100_000)
    assert "maximum context length" in str(bad.value)


def test_a_repeated_prompt_reports_the_tokens_its_prefix_cache_held(client: openai.OpenAI) -> None:
    """The engine's prefix cache keeps a prompt's blocks: the same long prompt again is read from it, and usage
    says how many tokens (OpenAI's `cached_tokens`, a part of the prompt's), whole and streamed, chat and Responses."""
    text = "The quick model reads every token of this long and quite repetitive prompt again. " * 12 + "Say hi"
    messages = [{"role": "user", "content": text}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
    assert first.usage is not None and again.usage is not None
    details = again.usage.prompt_tokens_details
    assert details is not None and 0 < (details.cached_tokens or 0) <= again.usage.prompt_tokens
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = [chunk for chunk in streamed][-1]
    assert last.usage is not None and last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == details.cached_tokens
    response = client.responses.create(model=MODEL, input=text, max_output_tokens=2, store=False)
    assert response.usage is not None and 0 < response.usage.input_tokens_details.cached_tokens
