"""Completions as evaluation harnesses use them (lm-evaluation-harness's log-likelihood requests): token-id
prompts, `echo` with `logprobs` scoring the prompt itself, `max_tokens: 0` to score without generating."""

from __future__ import annotations

import httpx
import openai
import pytest

from e2e.conftest import MODEL, Server

CONTEXT = "The capital of France is"
CONTINUATION = " Paris, a quick brown fox"


def token_ids(server: Server, text: str) -> list[int]:
    ids: list[int] = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "prompt": text}).json()["tokens"]
    return ids


def test_echo_scores_every_prompt_token_of_a_list_of_token_id_lists(server: Server, client: openai.OpenAI) -> None:
    whole, short = token_ids(server, CONTEXT + CONTINUATION), token_ids(server, CONTEXT)
    r = client.completions.create(model=MODEL, prompt=[whole, short], echo=True, logprobs=1, max_tokens=0)
    assert [c.index for c in r.choices] == [0, 1]
    for choice, ids, text in zip(r.choices, [whole, short], [CONTEXT + CONTINUATION, CONTEXT], strict=True):
        lp = choice.logprobs
        assert lp is not None and lp.token_logprobs is not None and lp.text_offset is not None
        assert choice.text == text  # a token-id prompt is echoed as its text
        assert len(lp.token_logprobs) == len(ids)  # one value per prompt token, nothing generated
        assert lp.token_logprobs[0] is None and all(isinstance(x, float) and x < 0 for x in lp.token_logprobs[1:])
        assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
        assert "".join(lp.tokens or []) == text
    assert r.usage is not None and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(whole) + len(short)
    # The shared prefix scores the same in both prompts (the model is causal), and the same scored separately.
    a, b = r.choices[0].logprobs.token_logprobs, r.choices[1].logprobs.token_logprobs  # type: ignore[union-attr]
    assert a[1 : len(short)] == pytest.approx(b[1:], abs=1e-3)
    alone = client.completions.create(model=MODEL, prompt=CONTEXT, echo=True, logprobs=0, max_tokens=0)
    assert alone.choices[0].logprobs.token_logprobs[1:] == pytest.approx(b[1:], abs=1e-3)  # type: ignore[index,union-attr]


def test_echo_with_generation_scores_the_prompt_then_the_new_tokens(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "prompt": CONTEXT, "echo": True, "logprobs": 2, "max_tokens": 4, "seed": 3}
    r = client.completions.create(**kwargs, extra_body={"ignore_eos": True})
    choice = r.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.text_offset is not None and lp.top_logprobs
    assert choice.text.startswith(CONTEXT) and len(choice.text) > len(CONTEXT)
    prompt_len = r.usage.prompt_tokens  # type: ignore[union-attr]
    assert len(lp.token_logprobs) == prompt_len + 4 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x is not None for x in lp.token_logprobs[1:])
    assert lp.text_offset[prompt_len] == len(CONTEXT)  # the first new token starts where the echoed prompt ends
    assert all(len(top or {}) <= 2 for top in lp.top_logprobs)
    # Streamed, the same values: the echo (with its scores) comes with the first event, then the new tokens.
    events = [e for e in client.completions.create(**kwargs, stream=True, extra_body={"ignore_eos": True})]
    streamed: list[float | None] = []
    offsets: list[int] = []
    for e in events:
        if e.choices and e.choices[0].logprobs:
            streamed += e.choices[0].logprobs.token_logprobs or []
            offsets += e.choices[0].logprobs.text_offset or []
    assert "".join(e.choices[0].text for e in events if e.choices) == choice.text
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-3)
    assert offsets == lp.text_offset


def test_max_tokens_zero_needs_echo(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
