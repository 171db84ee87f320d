"""`/v1/messages`: Anthropic's Messages API as a chat request, and the turn it makes as a message or its events.

A request is translated into a `ChatCompletionRequest` (`translate`, in messages_request.py) and prepared as chat
prepares its own (`ChatServing.prepare_chat`, clamping `max_tokens` to the context: Claude Code asks for 32,000 on
every request), so the prompt, the tools and the constraints are chat's; `count_tokens` renders that same prompt.
The turn comes back from `turns.py` and is put in Anthropic's shapes here: a `message`, or `message_start`, one
block after another (`content_block_start`, deltas, `content_block_stop`), `message_delta` and `message_stop`.

What a text model cannot take is refused by name (image, document and server tool blocks); what only steers
Anthropic's own models (`cache_control`, earlier turns' thinking blocks, server tools such as
`web_search_20250305`) is left out. `thinking` turns a reasoning model's thinking on or off (its chat template's
`enable_thinking`); its reasoning comes back as a thinking block before the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from bitinglip.cluster import EngineClient, ToolCallDelta
from bitinglip.core import BitingLipError, FinalEvent, InvalidInput, anthropic_error, get_logger
from bitinglip.gateway.protocol.messages import (
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
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
)
from bitinglip.gateway.serving.base import Prepared, Tally, refuse_embedding_model
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.messages_request import rename, translate
from bitinglip.gateway.serving.tools import check_tools
from bitinglip.gateway.serving.turns import prompt_tokens, turn_deltas, whole_turn

log = get_logger(__name__)

ROUTE = "/v1/messages"
STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


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

    def thinking(self, text: str) -> list[bytes]:
        """Reasoning, which comes before any text or call: one thinking block, opened by its first delta."""
        events = [] if self.count else self._start(ThinkingBlock(thinking=""))
        delta = ContentBlockDeltaEvent(index=self.count - 1, delta=ThinkingDelta(thinking=text))
        events.append(_sse(b"content_block_delta", delta))
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
            tool_list = tools.tools if tools is not None else None
            ids, _ = await ChatServing.render(chat.messages, engine, tool_list, chat.template_kwargs())
        except InvalidInput as exc:
            rename(exc, done)
            raise
        return len(ids)

    async def complete(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> MessageResponse:
        turn = await whole_turn(self.chat, prep, request_id, tally or Tally())
        content: list[OutputBlock] = [ThinkingBlock(thinking=turn.reasoning)] if turn.reasoning else []
        if turn.text:
            content.append(TextBlock(text=turn.text))
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
                    events = blocks.thinking(delta.reasoning) if delta.reasoning else []
                    if delta.text:
                        events.extend(blocks.text(delta.text))
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
