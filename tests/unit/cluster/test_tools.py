"""Tool calling on the engine side: vLLM's real parsers and structural tags, with the tiny model's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bitinglip.cluster.vllm import check_engine_args
from bitinglip.cluster.vllm.tools import VllmToolCalls, check_parser_fits, tool_parser_names
from bitinglip.core import InvalidInput, SettingsError

PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": PARAMS}},
    {"type": "function", "function": {"name": "ping"}},
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
HERMES_TEXT = 'Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def tag(calls: VllmToolCalls) -> dict[str, Any]:
    assert calls.constraint is not None
    return dict(json.loads(calls.constraint["structural_tag"]))


def test_a_named_choice_is_a_structural_tag_holding_the_arguments_to_the_schema(tokenizer: Any) -> None:
    calls = VllmToolCalls("hermes", tokenizer, TOOLS, NAMED, parallel=True)
    text = json.dumps(tag(calls))
    assert '"begin": "<tool_call>' in text and "get_weather" in text
    assert "ping" not in text  # only the named tool can be called
    assert json.dumps(PARAMS)[1:-1] in text  # its schema, not "any JSON" (vLLM's default for non-strict tools)
    assert '"max_whitespace_cnt": 1' in text
    assert calls.skip_special_tokens is False  # the hermes parser needs its tags in the text


def test_parallel_tool_calls_false_stops_after_the_first_call(tokenizer: Any) -> None:
    assert tag(VllmToolCalls("hermes", tokenizer, TOOLS, "required", parallel=False))["format"]["stop_after_first"]
    assert not tag(VllmToolCalls("hermes", tokenizer, TOOLS, "required", parallel=True))["format"]["stop_after_first"]


def test_auto_lets_text_through_until_a_call_starts_and_none_constrains_nothing(tokenizer: Any) -> None:
    auto = tag(VllmToolCalls("hermes", tokenizer, TOOLS, "auto", parallel=True))
    assert auto["format"]["type"] == "triggered_tags" and auto["format"]["triggers"] == ["<tool_call>"]
    none = VllmToolCalls("hermes", tokenizer, TOOLS, "none", parallel=True)
    assert none.constraint is None and none.parse(HERMES_TEXT) == (HERMES_TEXT, [])


def test_a_whole_answer_is_parsed_into_content_and_calls(tokenizer: Any) -> None:
    calls = VllmToolCalls("hermes", tokenizer, TOOLS, "auto", parallel=True)
    content, parsed = calls.parse(HERMES_TEXT)
    assert content == "Let me look. "
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [("get_weather", {"city": "Oslo"})]
    assert parsed[0].id
    assert calls.parse("just words") == ("just words", [])


def test_a_streamed_answer_gives_content_then_the_name_then_argument_fragments(tokenizer: Any) -> None:
    calls = VllmToolCalls("hermes", tokenizer, TOOLS, "auto", parallel=True)
    ids = tokenizer.encode(HERMES_TEXT, add_special_tokens=False)
    content, fragments, previous = "", [], ""
    for n, token in enumerate(ids, 1):
        text = tokenizer.decode(ids[:n])
        got_content, got = calls.parse_delta(0, text[len(previous) :], [token], finished=n == len(ids))
        previous = text
        content += got_content or ""
        fragments += got
    assert content == "Let me look. "
    assert fragments[0].id and fragments[0].name == "get_weather" and fragments[0].index == 0
    arguments = "".join(f.arguments or "" for f in fragments)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert calls.called(0) and not calls.called(1)


def test_text_held_back_as_a_possible_call_is_sent_when_the_answer_ends_without_one(tokenizer: Any) -> None:
    calls = VllmToolCalls("hermes", tokenizer, TOOLS, "auto", parallel=True)
    first, _ = calls.parse_delta(0, "a < b and <tool", [1], finished=False)
    assert first is not None and "<tool" not in first  # might open a call: held back
    last, fragments = calls.parse_delta(0, "s", [2], finished=True)
    assert (first + (last or ""), fragments) == ("a < b and <tools", [])


def test_a_parser_without_a_structural_tag_forces_calls_with_vllms_json_form(tokenizer: Any) -> None:
    named = VllmToolCalls("pythonic", tokenizer, TOOLS, NAMED, parallel=True)
    assert named.constraint == {"json": PARAMS, "disable_any_whitespace": True}
    content, parsed = named.parse('{"city": "Paris"}')
    assert content is None and [(c.name, json.loads(c.arguments)) for c in parsed] == [
        ("get_weather", {"city": "Paris"})
    ]
    required = VllmToolCalls("pythonic", tokenizer, TOOLS, "required", parallel=False)
    assert required.constraint is not None and required.constraint["json"]["maxItems"] == 1
    _, parsed = required.parse('[{"name": "ping", "parameters": {}}]')
    assert [(c.name, c.arguments) for c in parsed] == [("ping", "{}")]
    assert required.parse('[{"name": "pi')[1] == []  # cut off by max_tokens: no call
    # Streamed, the calls go out whole once the JSON is.
    assert required.parse_delta(0, '[{"name": "ping", ', [1], finished=False) == (None, [])
    _, out = required.parse_delta(0, '"parameters": {}}]', [2], finished=True)
    assert [(f.index, f.name, f.arguments) for f in out] == [(0, "ping", "{}")] and required.called(0)


def test_calls_finished_before_a_token_limit_cut_are_kept(tokenizer: Any) -> None:
    cut = HERMES_TEXT + '<tool_call>\n{"name": "get_weather", "arguments": {"ci'
    calls = VllmToolCalls("hermes", tokenizer, TOOLS, "required", parallel=True)
    assert calls.parse(cut)[1] == []  # the parser alone drops every call when the last is cut
    content, parsed = calls.parse(cut, cut=True)
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [("get_weather", {"city": "Oslo"})]
    assert (content or "").strip() == "Let me look."
    json_form = VllmToolCalls("pythonic", tokenizer, TOOLS, "required", parallel=True)
    text = '[{"name": "ping", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Pa'
    assert [c.name for c in json_form.parse(text, cut=True)[1]] == ["ping"]
    assert json_form.parse('[{"name": "pi', cut=True)[1] == []  # nothing was finished


def test_a_parser_name_vllm_does_not_have_is_refused_at_start_up_with_the_list() -> None:
    assert "hermes" in tool_parser_names() and "pythonic" in tool_parser_names()
    check_engine_args({"tool_call_parser": "hermes", "max_model_len": 512})
    check_engine_args({"tool_call_parser": ""})  # off
    with pytest.raises(SettingsError, match=r"no tool parser named 'hermez'.*hermes"):
        check_engine_args({"tool_call_parser": "hermez"}, "cluster.deployments.0.engine")


def test_a_parser_that_needs_tokens_the_model_lacks_is_refused_at_start_up(tokenizer: Any) -> None:
    check_parser_fits("hermes", tokenizer, "tiny")
    with pytest.raises(SettingsError, match=r"llama3_json.*does not fit model tiny.*python_tag"):
        check_parser_fits("llama3_json", tokenizer, "tiny")


def test_tools_vllm_refuses_are_a_400_naming_tools(tokenizer: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        VllmToolCalls("hermes", tokenizer, [{"type": "function", "function": {"name": 3}}], "auto", parallel=True)
    assert caught.value.param == "tools"
