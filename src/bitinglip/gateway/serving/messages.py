"""`/v1/messages`: Anthropic's Messages API as a chat request, and the turn it makes as a message or its events.

A request is translated into a `ChatCompletionRequest` (`translate`) and prepared as chat prepares its own
(`ChatServing.prepare_chat`, clamping `max_tokens` to the context: Claude Code asks for 32,000 on every request),
so the prompt, the tools and the constraints are chat's; `count_tokens` renders that same prompt. The turn comes
back from `turns.py` and is put in Anthropic's shapes here: a `message`, or `message_start`, one block after
another (`content_block_start`, deltas, `content_block_stop`), `message_delta` and `message_stop`.

What a text model cannot take is refused by name (image, document and server tool blocks); what only steers
Anthropic's own models (`thinking`, `cache_control`, earlier turns' thinking blocks, server tools such as
`web_search_20250305`) is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bitinglip.cluster import EngineClient, ToolCallDelta
from bitinglip.core import BitingLipError, FinalEvent, InvalidInput, anthropic_error, get_logger
from bitinglip.gateway.protocol.chat import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCallIn,
    FunctionDefinition,
    MessageToolCall,
    NamedFunction,
    NamedToolChoice,
    Tool,
)
from bitinglip.gateway.protocol.messages import (
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    DeltaUsage,
    InputJsonDelta,
    MessageDeltaEvent,
    MessageResponse,
    MessagesInput,
    MessagesRequest,
    MessageStartEvent,
    MessageStopEvent,
    MessageUsage,
    OutputBlock,
    PingEvent,
    StopDelta,
    StopReason,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)
from bitinglip.gateway.protocol.sampling import check_range
from bitinglip.gateway.serving.base import Prepared, Tally, refuse_embedding_model
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.tools import check_tools
from bitinglip.gateway.serving.turns import prompt_tokens, turn_deltas, whole_turn

log = get_logger(__name__)

ROUTE = "/v1/messages"
# Parts of the system prompt (the `system` field's blocks, `role: "system"` messages) are separate texts; the
# text blocks of one message are one text, joined as chat templates join a message's text parts.
SYSTEM_JOIN = "\n\n"
BLOCK_JOIN = "\n"
DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # an earlier turn's reasoning: not for this model
STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@dataclass(slots=True)
class Translated:
    """A Messages request as a chat request, and where each chat message and tool came from (for error messages)."""

    chat: ChatCompletionRequest
    message_origins: list[int | None] = field(default_factory=list)  # the request's message index; None: system
    tool_origins: list[int] = field(default_factory=list)  # the request's tool index


def _text_of(content: str | list[ContentBlock] | None, param: str, join: str) -> str:
    """Text content (a string, or text blocks) as one text; any other block is refused by name."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(content):
        if block.type != "text" or block.text is None:
            raise InvalidInput(
                f"`{param}.{j}` is a {block.type!r} block; only text blocks are taken here", param=f"{param}.{j}.type"
            )
        texts.append(block.text)
    return join.join(texts)


def _refusal(kind: str, role: str) -> str:
    if kind == "tool_use":
        return "a tool_use block belongs in an assistant turn (the model's calls), not a user turn"
    if kind == "tool_result":
        return "a tool_result block belongs in a user turn (answering the model's calls), not an assistant turn"
    return (
        f"{kind!r} blocks cannot be taken: this server's models read text (text, tool_use and tool_result blocks; "
        "thinking blocks from earlier turns are dropped)"
    )


def _turn(role: str, content: str | list[ContentBlock], where: str) -> list[ChatMessage]:
    """One user or assistant message as chat messages: a user turn's tool results each a `tool` message first
    (Anthropic puts them first in the turn), then its text; an assistant turn's text and calls as one message."""
    blocks = [ContentBlock(type="text", text=content)] if isinstance(content, str) else content
    texts: list[str] = []
    calls: list[MessageToolCall] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        if block.type == "text" and block.text is not None:
            texts.append(block.text)
        elif block.type == "tool_use" and role == "assistant":
            calls.append(_history_call(block, at))
        elif block.type == "tool_result" and role == "user":
            if not block.tool_use_id:
                raise InvalidInput(f"`{at}.tool_use_id` is required", param=f"{at}.tool_use_id")
            text = _text_of(block.content, f"{at}.content", BLOCK_JOIN)
            results.append(ChatMessage(role="tool", content=text, tool_call_id=block.tool_use_id))
        elif block.type in DROPPED_BLOCKS:
            continue
        elif block.type == "text":
            raise InvalidInput(f"`{at}.text` is required", param=f"{at}.text")
        else:
            raise InvalidInput(f"`{at}`: {_refusal(block.type, role)}", param=f"{at}.type")
    if texts or calls or not results:
        joined = BLOCK_JOIN.join(texts) if texts or not calls else None
        results.append(ChatMessage(role=role, content=joined, tool_calls=calls or None))
    return results


def _history_call(block: ContentBlock, at: str) -> MessageToolCall:
    if not block.id or not block.name:
        raise InvalidInput(f"`{at}` (tool_use) needs its `id` and `name`", param=f"{at}.id" if not block.id else at)
    given = {} if block.input is None else block.input
    if not isinstance(given, dict):
        raise InvalidInput(f"`{at}.input` must be an object", param=f"{at}.input")
    return MessageToolCall(id=block.id, function=FunctionCallIn(name=block.name, arguments=json.dumps(given)))


def _tools(req: MessagesInput) -> tuple[list[Tool] | None, list[int]]:
    """Custom tools as chat's function tools; Anthropic's server tools (run by Anthropic, not by the client) are
    left out of what the model sees, and said so."""
    tools: list[Tool] = []
    origins: list[int] = []
    left_out: list[str] = []
    for k, tool in enumerate(req.tools or []):
        if tool.type not in (None, "custom"):
            left_out.append(f"{tool.name} ({tool.type})")
            continue
        if tool.input_schema is None:
            raise InvalidInput(f"`tools.{k}.input_schema` is required", param=f"tools.{k}.input_schema")
        function = FunctionDefinition(name=tool.name, description=tool.description, parameters=tool.input_schema)
        tools.append(Tool(type="function", function=function))
        origins.append(k)
    if left_out:
        log.info("messages.server_tools_left_out", tools=left_out)
    return tools or None, origins


def translate(req: MessagesInput) -> Translated:
    """``req`` as the chat request that renders the same prompt; its sampling fields too for a create request."""
    system = [] if req.system is None else [_text_of(req.system, "system", SYSTEM_JOIN)]
    turns: list[ChatMessage] = []
    origins: list[int | None] = []
    for i, message in enumerate(req.messages):
        where = f"messages.{i}"
        if message.role == "system":  # Claude Code sends one mid-conversation: it joins the system prompt
            system.append(_text_of(message.content, f"{where}.content", SYSTEM_JOIN))
            continue
        if message.role not in ("user", "assistant"):
            raise InvalidInput(
                f"`{where}.role` must be 'user', 'assistant' or 'system', got {message.role!r}", param=f"{where}.role"
            )
        made = _turn(message.role, message.content, where)
        turns.extend(made)
        origins.extend([i] * len(made))
    if system:
        turns.insert(0, ChatMessage(role="system", content=SYSTEM_JOIN.join(system)))
        origins.insert(0, None)
    tools, tool_origins = _tools(req)
    chat = ChatCompletionRequest(model=req.model, messages=turns, tools=tools, keep_alive=req.keep_alive)
    if (choice := req.tool_choice) is not None:
        if choice.type == "tool":
            if not choice.name:
                raise InvalidInput("`tool_choice.name` is required with type 'tool'", param="tool_choice.name")
            chat.tool_choice = NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
        elif choice.type == "any":
            chat.tool_choice = "required"
        elif choice.type == "none":
            chat.tool_choice = "none"
        elif tools is not None:
            chat.tool_choice = "auto"
        if choice.disable_parallel_tool_use:
            chat.parallel_tool_calls = False
    if isinstance(req, MessagesRequest):
        check_range("temperature", req.temperature, 0.0, 1.0)  # Anthropic's range, not OpenAI's 0-2
        chat.max_tokens = req.max_tokens
        chat.stream = req.stream
        chat.stop = req.stop_sequences or None
        chat.temperature = req.temperature
        chat.top_p = req.top_p
        chat.top_k = req.top_k
    return Translated(chat, origins, tool_origins)


_TOOL_PARAM = re.compile(r"tools([.\[])(\d+)(\]?)\.function\.(parameters|name)")
_MESSAGE_PARAM = re.compile(r"messages([.\[])(\d+)(\]?)")


def rename(exc: InvalidInput, done: Translated) -> None:
    """An error about the chat request, put in the Messages request's names (`tools.2.input_schema`, not
    `tools.1.function.parameters` of the tools left after the server tools)."""

    def tool(match: re.Match[str]) -> str:
        index = int(match[2])
        if index >= len(done.tool_origins):
            return match[0]
        name = "input_schema" if match[4] == "parameters" else "name"
        return f"tools{match[1]}{done.tool_origins[index]}{match[3]}.{name}"

    def message(match: re.Match[str]) -> str:
        index = int(match[2])
        if index >= len(done.message_origins):
            return match[0]
        origin = done.message_origins[index]
        return "system" if origin is None else f"messages{match[1]}{origin}{match[3]}"

    def renamed(text: str) -> str:
        return (
            _MESSAGE_PARAM.sub(message, _TOOL_PARAM.sub(tool, text))
            .replace("`stop` sequences", "`stop_sequences`")
            .replace("`stop`", "`stop_sequences`")
        )

    exc.message = renamed(exc.message)
    exc.args = (exc.message,)
    if exc.param is not None:
        exc.param = "stop_sequences" if exc.param == "stop" else renamed(exc.param)


def _input(arguments: str, name: str) -> dict[str, Any]:
    """A call's arguments as the object `input` must be (a call the parser kept is JSON; anything else is logged)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    log.warning("messages.tool_input_not_an_object", tool=name, arguments=arguments[:200])
    return {}


def _sse(name: bytes, event: msgspec.Struct) -> bytes:
    return b"event: " + name + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


class _Blocks:
    """A streamed message's content blocks, one open at a time, as Anthropic sends them: a block is stopped when
    the next starts, the text after a call goes in a new text block."""

    __slots__ = ("calls", "count", "open", "open_text")

    def __init__(self) -> None:
        self.count = 0  # blocks started
        self.open: int | None = None  # the index of the block open now
        self.open_text = False
        self.calls: dict[int, int] = {}  # a call's index in the turn -> its block's index

    def _stop(self) -> list[bytes]:
        if self.open is None:
            return []
        event = _sse(b"content_block_stop", ContentBlockStopEvent(index=self.open))
        self.open, self.open_text = None, False
        return [event]

    def _start(self, block: OutputBlock) -> list[bytes]:
        events = self._stop()
        self.open = self.count
        self.count += 1
        events.append(_sse(b"content_block_start", ContentBlockStartEvent(index=self.open, content_block=block)))
        return events

    def text(self, text: str) -> list[bytes]:
        events = [] if self.open_text else self._start(TextBlock(text=""))
        self.open_text = True
        index = self.count - 1
        events.append(_sse(b"content_block_delta", ContentBlockDeltaEvent(index=index, delta=TextDelta(text=text))))
        return events

    def call(self, fragment: ToolCallDelta) -> list[bytes]:
        events: list[bytes] = []
        index = self.calls.get(fragment.index)
        if index is None:
            call_id = fragment.id or f"toolu_{uuid.uuid4().hex[:24]}"
            events = self._start(ToolUseBlock(id=call_id, name=fragment.name or "", input={}))
            index = self.calls[fragment.index] = self.count - 1
        if fragment.arguments:
            delta = InputJsonDelta(partial_json=fragment.arguments)
            events.append(_sse(b"content_block_delta", ContentBlockDeltaEvent(index=index, delta=delta)))
        return events

    def close(self) -> list[bytes]:
        """The last block stopped; a turn that made nothing still has its (empty) text block, as its message has."""
        if self.count == 0:
            return [*self._start(TextBlock(text="")), *self._stop()]
        return self._stop()


class MessagesServing:
    """The Messages codec: prepared as chat, rendered as Anthropic's message or events."""

    def __init__(self, chat: ChatServing) -> None:
        self.chat = chat

    async def prepare(self, req: MessagesRequest, engine: EngineClient) -> Prepared:
        done = translate(req)
        try:
            return await self.chat.prepare_chat(done.chat, engine, ROUTE, clamp=True)
        except InvalidInput as exc:
            rename(exc, done)
            raise

    async def count_tokens(self, req: MessagesInput, engine: EngineClient) -> int:
        """The prompt's tokens as a create request with the same body has them: its system, messages and tools
        rendered by the chat template, as `prepare_chat` renders them."""
        refuse_embedding_model(engine, ROUTE)
        done = translate(req)
        chat = done.chat
        try:
            tools = await asyncio.to_thread(check_tools, chat) if chat.tools else check_tools(chat)
            ids, _ = await ChatServing.render(chat.messages, engine, tools.tools if tools is not None else None)
        except InvalidInput as exc:
            rename(exc, done)
            raise
        return len(ids)

    async def complete(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> MessageResponse:
        turn = await whole_turn(self.chat, prep, request_id, tally or Tally())
        content: list[OutputBlock] = [TextBlock(text=turn.text)] if turn.text else []
        content.extend(ToolUseBlock(id=c.id, name=c.name, input=_input(c.arguments, c.name)) for c in turn.calls)
        return MessageResponse(
            id="msg_" + request_id,
            model=prep.model,
            content=content or [TextBlock(text="")],
            stop_reason=stop_reason(turn.finish, turn.stop_sequence, prep),
            stop_sequence=turn.stop_sequence,
            usage=MessageUsage(input_tokens=turn.prompt_tokens, output_tokens=turn.completion_tokens),
        )

    async def stream(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> AsyncGenerator[bytes, None]:
        """Anthropic's events: message_start and a ping at once, the blocks as they are made, then message_delta
        (stop reason, output tokens) and message_stop; an error once the stream has started is an `error` event."""
        tally = tally or Tally()
        usage = MessageUsage(input_tokens=prompt_tokens(prep), output_tokens=0)
        message = MessageResponse(
            id="msg_" + request_id, model=prep.model, content=[], stop_reason=None, stop_sequence=None, usage=usage
        )
        yield _sse(b"message_start", MessageStartEvent(message=message)) + _sse(b"ping", PingEvent())
        blocks = _Blocks()
        finish = "stop"
        stop_sequence: str | None = None
        try:
            async with contextlib.aclosing(turn_deltas(prep, request_id, tally)) as deltas:
                async for delta in deltas:
                    events = blocks.text(delta.text) if delta.text else []
                    for fragment in delta.calls:
                        events.extend(blocks.call(fragment))
                    if delta.finish is not None:
                        finish, stop_sequence = delta.finish, delta.stop_sequence
                    if events:
                        yield b"".join(events)
            stop = StopDelta(stop_reason=stop_reason(finish, stop_sequence, prep), stop_sequence=stop_sequence)
            ending = blocks.close()
            ending.append(
                _sse(b"message_delta", MessageDeltaEvent(delta=stop, usage=DeltaUsage(tally.completion_tokens)))
            )
            ending.append(_sse(b"message_stop", MessageStopEvent()))
        except BitingLipError as exc:
            tally.error = True
            # The status went out with the first event: the error travels as one more, in Anthropic's envelope.
            ending = [_sse(b"error", anthropic_error(exc.status, exc.message))]
        yield FinalEvent(b"".join(ending))


def stop_reason(finish: str, stop_sequence: str | None, prep: Prepared) -> StopReason:
    """Anthropic's stop reason for the engine's finish.

    A turn cut by a limit the server set below the client's `max_tokens` (the context's room, or
    `gateway.max_output_tokens`; said in `x-max-tokens-clamped`) ends as `end_turn`, not `max_tokens`: Claude Code
    takes `max_tokens` to mean its own 32,000 were spent and fails the turn ("exceeded the 32000 output token
    maximum"), printing nothing of what was made."""
    if stop_sequence is not None:
        return "stop_sequence"
    if finish == "length" and prep.asked_max_tokens is not None:
        return "end_turn"
    return STOP_REASONS.get(finish, "end_turn")
