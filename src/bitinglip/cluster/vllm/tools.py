"""Tool calls through vLLM's own machinery: its tool parsers (`vllm.tool_parsers`) and xgrammar's structural tags.

A deployment names the parser for its model's tool-call format (`tool_call_parser`, as `vllm serve
--tool-call-parser` does). The parser reads calls out of the model's text, whole or as it streams. Where the
parser's format has a structural tag (hermes and others), the tag constrains every call the model makes: its
envelope and its arguments, held to the tool's parameter schema as if every tool were `strict` (vLLM's
`PARAMETER` level). So a forced call (`required`, a named function) always parses and validates, even from a
weak model; vLLM's default level leaves a non-strict tool's arguments free, which is how a named call came back
with `null` arguments. Parsers without a structural tag get vLLM's JSON-schema form for forced calls instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bitinglip.cluster.protocol import ToolCall, ToolCallDelta
from bitinglip.core import InvalidInput, SettingsError

# Whitespace xgrammar lets a model put in a row between the JSON tokens of the arguments: left unbounded, a weak
# model pads them with blank characters until max_tokens. 1 is xgrammar's least (0 is refused as "not positive").
ARGUMENT_WHITESPACE = 1


def tool_parser_names() -> list[str]:
    from vllm.tool_parsers import ToolParserManager

    return list(ToolParserManager.list_registered())


def check_tool_parser(name: str | None, source: str) -> None:
    """Refuse a parser name vLLM does not have before anything starts, listing the ones it has."""
    if name and name not in (names := tool_parser_names()):
        raise SettingsError(f"setting `{source}`: no tool parser named {name!r}; vLLM has: {', '.join(names)}")


def check_parser_fits(name: str, tokenizer: Any, model: str) -> None:
    """Build the parser once on the model's tokenizer, at start-up: some need tokens only their model family has
    (llama3_json needs <|python_tag|>), and a misfit must stop the deployment, not fail every request later."""
    from vllm.tool_parsers import ToolParserManager

    try:
        ToolParserManager.get_tool_parser(name)(tokenizer, None)
    except Exception as exc:
        raise SettingsError(f"tool_call_parser {name!r} does not fit model {model}: {exc}") from exc


def _cap_argument_whitespace(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "json_schema" and "max_whitespace_cnt" in node:
            node["max_whitespace_cnt"] = ARGUMENT_WHITESPACE
        for value in node.values():
            _cap_argument_whitespace(value)
    elif isinstance(node, list):
        for value in node:
            _cap_argument_whitespace(value)


class _Stream:
    """One choice's text so far and its parser (vLLM's streaming parsers keep state per response)."""

    __slots__ = ("content", "ids", "parser", "sent", "text")

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.text = ""
        self.ids: list[int] = []
        self.sent = False  # a call has gone out for this choice
        self.content = 0  # characters sent as content


class VllmToolCalls:
    """One request's tool calling: the constraint for its sampling, then the calls read from its output."""

    def __init__(
        self, parser_name: str, tokenizer: Any, tools: list[dict[str, Any]], tool_choice: Any, parallel: bool
    ) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers import ToolParserManager

        self._cls = ToolParserManager.get_tool_parser(parser_name)
        self._tokenizer = tokenizer
        try:
            self._request = ChatCompletionRequest(
                model="-",
                messages=[{"role": "user", "content": ""}],
                tools=tools,
                tool_choice=tool_choice,
                parallel_tool_calls=parallel,
            )
        except ValueError as exc:  # pydantic's ValidationError is one
            raise InvalidInput(f"the tools were refused: {exc}", param="tools") from exc
        self.forced = tool_choice == "required" or isinstance(tool_choice, dict)
        self.named = tool_choice["function"]["name"] if isinstance(tool_choice, dict) else None
        self._streams: dict[int, _Stream] = {}
        probe = self._parser()
        self._request = probe.adjust_request(self._request)
        self.skip_special_tokens = bool(self._request.skip_special_tokens)
        self._json_form = False  # forced calls as vLLM's plain JSON (no structural tag for this format)
        self.constraint = self._constraint(probe, parallel)

    def _parser(self) -> Any:
        return self._cls(self._tokenizer, self._request.tools)

    def _constraint(self, parser: Any, parallel: bool) -> dict[str, Any] | None:
        from vllm.tool_parsers.structural_tag_registry import limit_to_single_tool_call
        from vllm.tool_parsers.tool_strict_level import ToolStrictLevel
        from vllm.tool_parsers.utils import get_json_schema_from_tools

        if self._request.tool_choice == "none":
            return None
        if parser.structural_tag_model is not None:
            tag = parser.get_structural_tag(self._request, reasoning=False, strict_level=ToolStrictLevel.PARAMETER)
            if tag is not None:
                if not parallel:
                    limit_to_single_tool_call(tag)
                dumped = tag.model_dump()
                _cap_argument_whitespace(dumped)
                return {"structural_tag": json.dumps(dumped)}
        if not self.forced:
            return None
        self._json_form = True
        schema = get_json_schema_from_tools(self._request.tool_choice, self._request.tools, parallel)
        return {"json": schema, "disable_any_whitespace": True}

    # -- whole answers

    def parse(self, text: str, cut: bool = False) -> tuple[str | None, list[ToolCall]]:
        """The content and the calls in one choice's whole text; ``cut``: the text ended at its token limit, and
        the calls it finished before the cut are kept (a parser drops them all when the last one is cut short)."""
        if self._request.tool_choice == "none":
            return text, []
        if self._json_form:
            return None, self._json_calls(_finished_items(text) if cut else text)
        parser = self._parser()
        end = getattr(parser, "tool_call_end_token", None)
        if cut and isinstance(end, str) and end and end in text:
            text = text[: text.rindex(end) + len(end)]  # up to the end of the last call made whole
        info = parser.extract_tool_calls(text, self._request)
        if not info.tools_called:
            return text, []
        calls = [
            ToolCall(id=call.id or _call_id(), name=call.function.name, arguments=call.function.arguments)
            for call in info.tool_calls
        ]
        return (info.content or None), calls

    def _json_calls(self, text: str) -> list[ToolCall]:
        try:
            value = json.loads(text)
        except ValueError:
            return []  # cut off by max_tokens: no call to report (finish_reason says "length")
        if self.named is not None:
            return [ToolCall(id=_call_id(), name=self.named, arguments=json.dumps(value, ensure_ascii=False))]
        return [
            ToolCall(id=_call_id(), name=item["name"], arguments=json.dumps(item["parameters"], ensure_ascii=False))
            for item in value
        ]

    # -- streams

    def parse_delta(
        self, index: int, text: str, token_ids: Sequence[int], finished: bool
    ) -> tuple[str | None, list[ToolCallDelta]]:
        """The content and the call fragments one delta of choice ``index`` adds; held back while undecided."""
        stream = self._streams.get(index)
        if stream is None:
            stream = self._streams[index] = _Stream(self._parser())
        previous_text, previous_ids = stream.text, stream.ids
        stream.text = previous_text + text
        stream.ids = previous_ids + list(token_ids)
        if self._request.tool_choice == "none":
            return text or None, []
        if self._json_form:  # plain JSON: the calls are known when it is whole
            if not finished:
                return None, []
            calls = self._json_calls(stream.text)
            stream.sent = bool(calls)
            return None, [
                ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments) for i, c in enumerate(calls)
            ]
        delta = stream.parser.extract_tool_calls_streaming(
            previous_text, stream.text, text, previous_ids, stream.ids, list(token_ids), self._request
        )
        content, fragments = None, []
        if delta is not None:
            content = delta.content or None
            fragments = [_fragment(call) for call in delta.tool_calls or []]
        if finished and (rest := stream.parser.get_remaining_unstreamed_args()):
            fragments.append(ToolCallDelta(index=len(stream.parser.prev_tool_call_arr) - 1, arguments=rest))
        stream.sent = stream.sent or bool(fragments)
        stream.content += len(content or "")
        if finished and not stream.sent and stream.content < len(stream.text):
            # The parser holds back text that might open a call ("... <tool"); at the end it opened none.
            content = (content or "") + stream.text[stream.content :]
            stream.content = len(stream.text)
        return content, fragments

    def called(self, index: int) -> bool:
        """Choice ``index`` has streamed a call (its finish_reason is then "tool_calls")."""
        stream = self._streams.get(index)
        return stream is not None and stream.sent


def _finished_items(text: str) -> str:
    """A JSON array cut short, closed after its last whole item ("[{...}, {..." -> "[{...}]"); the text as it is
    when it is not one."""
    depth, in_string, escaped, last = 0, False, False, -1
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 1:
                last = i  # an item of the outer array is whole
    if not text.lstrip().startswith("[") or last < 0:
        return text
    return text[: last + 1] + "]"


def _fragment(call: Any) -> ToolCallDelta:
    function = call.function
    return ToolCallDelta(
        index=call.index,
        id=call.id,
        name=function.name if function is not None else None,
        arguments=function.arguments if function is not None else None,
    )


def _call_id() -> str:
    from vllm.renderers.chat_utils import make_tool_call_id

    return str(make_tool_call_id())
