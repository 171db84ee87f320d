"""Reasoning through vLLM's own parsers on the tiny reasoning model's real tokenizer: the names checked at start-up,
the text split into reasoning and answer, whole and streamed alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bitinglip.cluster.vllm import check_engine_args
from bitinglip.cluster.vllm.reasoning import VllmReasoning, check_reasoning_fits, reasoning_parser_names
from bitinglip.core import SettingsError

TEXT = "the small model reads</think>Hello there</think> again"


@pytest.fixture(scope="module")
def tokenizer(tiny_reasoning_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_reasoning_dir)


def reasoning(tokenizer: Any, prompt: str = "<|im_start|>assistant\n<think>\n") -> VllmReasoning:
    made = VllmReasoning.for_prompt("deepseek_r1", tokenizer, tokenizer.encode(prompt), None)
    assert made is not None
    return made


def test_a_parser_name_vllm_does_not_have_is_refused_at_start_up_with_the_list() -> None:
    assert {"deepseek_r1", "qwen3"} <= set(reasoning_parser_names())
    check_engine_args({"reasoning_parser": "deepseek_r1"})
    with pytest.raises(SettingsError, match=r"no reasoning parser named 'deepseek'.*deepseek_r1"):
        check_engine_args({"reasoning_parser": "deepseek"}, "cluster.deployments.0.engine")


def test_a_parser_whose_tokens_the_model_lacks_is_refused(tokenizer: Any, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    check_reasoning_fits("deepseek_r1", tokenizer, "tiny-think")
    with pytest.raises(SettingsError, match=r"deepseek_r1.*does not fit model tiny"):
        check_reasoning_fits("deepseek_r1", AutoTokenizer.from_pretrained(tiny_model_dir), "tiny")


def test_the_whole_text_is_split_at_the_first_end(tokenizer: Any) -> None:
    split = reasoning(tokenizer)
    assert split.parse(0, TEXT) == ("the small model reads", "Hello there</think> again")
    assert split.parse(1, "still thinking") == ("still thinking", None)
    assert split.tokens() == len(tokenizer.encode("the small model reads")) + len(tokenizer.encode("still thinking"))


@pytest.mark.parametrize("step", [1, 2, 5])
def test_a_stream_splits_as_the_whole_text_does(tokenizer: Any, step: int) -> None:
    """Token by token or a few at once (the stream interval), the parts joined are the whole text's parts; an end
    marker alone after the end is answer, as it is in the whole text."""
    ids = tokenizer.encode(TEXT)
    split = reasoning(tokenizer)
    thought, answer = [], []
    for start in range(0, len(ids), step):
        piece = ids[start : start + step]
        r, c = split.parse_delta(0, tokenizer.decode(piece), piece)
        thought.append(r or "")
        answer.append(c or "")
    assert ("".join(thought), "".join(answer)) == reasoning(tokenizer).parse(0, TEXT)


def test_a_prompt_that_closed_its_reasoning_gets_no_parsing(tokenizer: Any) -> None:
    closed = tokenizer.encode("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert VllmReasoning.for_prompt("deepseek_r1", tokenizer, closed, None) is None
