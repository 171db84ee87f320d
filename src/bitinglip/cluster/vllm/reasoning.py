"""Reasoning through vLLM's own reasoning parsers (`vllm.reasoning`).

A deployment names its model's reasoning format by `reasoning_parser` (as `vllm serve --reasoning-parser`
does). It is also an engine argument: the engine holds a request's output constraint (JSON, a forced tool call)
back until the reasoning has ended. Here the parser splits the model's text into its reasoning and its answer,
whole or as it streams; the answer then goes on to the tool parser.

A prompt whose reasoning is closed already (a chat template told `enable_thinking=false` ends it with
`<think></think>`) gets no parsing: everything the model writes is answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bitinglip.core import SettingsError


def reasoning_parser_names() -> list[str]:
    from vllm.reasoning import ReasoningParserManager

    return sorted(ReasoningParserManager.list_registered())


def check_reasoning_parser(name: str | None, source: str) -> None:
    """Refuse a parser name vLLM does not have before anything starts, listing the ones it has."""
    if name and name not in (names := reasoning_parser_names()):
        raise SettingsError(f"setting `{source}`: no reasoning parser named {name!r}; vLLM has: {', '.join(names)}")


def _parser_class(name: str) -> Any:
    from vllm.reasoning import ReasoningParserManager

    return ReasoningParserManager.get_reasoning_parser(name)


def check_reasoning_fits(name: str, tokenizer: Any, model: str) -> None:
    """Build the parser once on the model's tokenizer, at start-up: most need their model family's tokens
    (`<think>` and `</think>`), and a misfit must stop the deployment, not fail every request later."""
    try:
        _parser_class(name)(tokenizer)
    except Exception as exc:
        raise SettingsError(f"reasoning_parser {name!r} does not fit model {model}: {exc}") from exc


class _Split:
    """One choice's text and token ids so far, and its streaming parser (vLLM's keep state per response)."""

    __slots__ = ("ended", "ids", "parser", "reasoning", "text")

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.text = ""
        self.ids: list[int] = []
        self.reasoning: list[str] = []
        self.ended = False  # the reasoning has ended: the rest is answer, passed as it comes


class VllmReasoning:
    """One request's reasoning: each choice's text split into its reasoning and its answer."""

    def __init__(self, parser_name: str, tokenizer: Any, request: Any) -> None:
        self._cls = _parser_class(parser_name)
        self._tokenizer = tokenizer
        self._request = request  # some parsers read the request; the ones here take vLLM's chat request
        self._splits: dict[int, _Split] = {}
        self._whole: dict[int, str] = {}

    @classmethod
    def for_prompt(
        cls, parser_name: str, tokenizer: Any, prompt_ids: Sequence[int], request: Any
    ) -> VllmReasoning | None:
        """The request's reasoning; None where its prompt has closed the reasoning already (thinking turned off)."""
        parser = _parser_class(parser_name)(tokenizer)
        if prompt_ids and parser.is_reasoning_end(list(prompt_ids)):
            return None
        return cls(parser_name, tokenizer, request)

    def parse(self, index: int, text: str) -> tuple[str | None, str | None]:
        """The reasoning and the answer in choice ``index``'s whole text (None for a part it has not)."""
        reasoning, content = self._cls(self._tokenizer).extract_reasoning(text, self._request)
        if reasoning:
            self._whole[index] = reasoning
        return reasoning or None, content or None

    def parse_delta(self, index: int, text: str, token_ids: Sequence[int]) -> tuple[str | None, str | None]:
        """The reasoning and the answer one streamed delta of choice ``index`` adds."""
        split = self._splits.get(index)
        if split is None:
            split = self._splits[index] = _Split(self._cls(self._tokenizer))
        if split.ended:
            # Past the end the parser has nothing to split, and vLLM's would drop a lone end marker that the whole
            # answer keeps (a weak model writes `</think>` again): the stream must say what the whole answer says.
            return None, text or None
        previous_text, previous_ids = split.text, split.ids
        split.text = previous_text + text
        split.ids = previous_ids + list(token_ids)
        delta = split.parser.extract_reasoning_streaming(
            previous_text, split.text, text, previous_ids, split.ids, list(token_ids)
        )
        split.ended = split.parser.is_reasoning_end_streaming(split.ids, token_ids)
        if delta is None:
            return None, None  # the delta is the start or end marker alone
        if delta.reasoning:
            split.reasoning.append(delta.reasoning)
        return delta.reasoning or None, delta.content or None

    def tokens(self) -> int:
        """Tokens of reasoning made over every choice so far: its text tokenized again (the parsers split text,
        not tokens; a marker is counted with neither part)."""
        texts = list(self._whole.values()) + ["".join(split.reasoning) for split in self._splits.values()]
        return sum(len(self._tokenizer.encode(text, add_special_tokens=False)) for text in texts if text)
