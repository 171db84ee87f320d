"""The events of a streamed `/v1/responses` answer: OpenAI's event lines, numbered, and the output items they open,
fill and close (a reasoning item, a message, a call), one open at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from bitinglip.gateway.protocol.responses import (
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputText,
    ReasoningText,
)
from bitinglip.gateway.serving.responses_request import new_id

if TYPE_CHECKING:
    from bitinglip.gateway.serving.responses import Context


class EventWriter:
    """Server-sent events as OpenAI's Responses stream has them: an `event:` line naming the type, then the JSON
    with `type` first and `sequence_number` last, counting from 0."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        body = msgspec.json.encode({"type": kind, **fields, "sequence_number": self.seq})
        self.seq += 1
        return b"event: %s\ndata: %s\n\n" % (kind.encode(), body)


class OpenItems:
    """The output items of a streamed response: at most one open at a time (a message, or a call whose arguments
    are arriving); a change of kind closes the one open. Text deltas, the hot path, go out through a prefix built
    once per message."""

    def __init__(self, ctx: Context, out: EventWriter) -> None:
        self.ctx = ctx
        self.out = out
        self.output: list[OutputItem] = []
        self.message: OutputMessage | None = None
        self.texts: list[str] = []
        self.delta_head = b""
        self.open_call: OutputFunctionCall | None = None
        self.call_index: int | None = None  # the engine's index of the open call
        self.arguments: list[str] = []
        self.thought: OutputReasoning | None = None  # the reasoning item, while open
        self.thoughts: list[str] = []

    def _start(self, item: OutputItem) -> bytes:
        self.output.append(item)
        return self.out.event("response.output_item.added", output_index=len(self.output) - 1, item=item)

    def reasoning(self, text: str) -> list[bytes]:
        """Reasoning, which comes before any text or call: one reasoning item, opened by its first delta."""
        events: list[bytes] = []
        if self.thought is None:
            self.thought = OutputReasoning(id=new_id("rs"), status="in_progress", content=[])
            events.append(self._start(self.thought))
            part = ReasoningText(text="")
            events.append(self._part_event("response.content_part.added", self.thought, part))
        self.thoughts.append(text)
        events.append(
            self.out.event(
                "response.reasoning_text.delta",
                item_id=self.thought.id,
                output_index=self.output.index(self.thought),
                content_index=0,
                delta=text,
            )
        )
        return events

    def _part_event(self, kind: str, thought: OutputReasoning, part: ReasoningText) -> bytes:
        index = self.output.index(thought)
        return self.out.event(kind, item_id=thought.id, output_index=index, content_index=0, part=part)

    def _close_reasoning(self, cut: bool) -> list[bytes]:
        thought = self.thought
        if thought is None:
            return []
        index = self.output.index(thought)
        done = ReasoningText(text="".join(self.thoughts))
        thought.content = [done]
        thought.status = "incomplete" if cut else "completed"
        events = [
            self.out.event(
                "response.reasoning_text.done", item_id=thought.id, output_index=index, content_index=0, text=done.text
            ),
            self._part_event("response.content_part.done", thought, done),
            self.out.event("response.output_item.done", output_index=index, item=thought),
        ]
        self.thought, self.thoughts = None, []
        return events

    def text(self, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self.message is None:
            events.extend(self._close_reasoning(False))
            events.extend(self._close_call(False))
            self.message = OutputMessage(id=new_id("msg"), status="in_progress", content=[])
            events.append(self._start(self.message))
            index = len(self.output) - 1
            empty = OutputText(text="")
            part = self.out.event(
                "response.content_part.added", item_id=self.message.id, output_index=index, content_index=0, part=empty
            )
            events.append(part)
            self.delta_head = (
                b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":%s,'
                b'"output_index":%d,"content_index":0,"delta":' % (msgspec.json.encode(self.message.id), index)
            )
        events.append(self.delta(text))
        return events

    def delta(self, text: str) -> bytes:
        """The `response.output_text.delta` of the open message: its constant head, the text, the number."""
        self.texts.append(text)
        event = b'%s%s,"logprobs":[],"sequence_number":%d}\n\n' % (self.delta_head, _json(text), self.out.seq)
        self.out.seq += 1
        return event

    def _close_message(self, cut: bool) -> list[bytes]:
        message = self.message
        if message is None:
            return []
        self.message = None
        index = self.output.index(message)
        done = OutputText(text="".join(self.texts))
        self.texts = []
        message.content = [done]
        message.status = "incomplete" if cut else "completed"
        out = self.out
        return [
            out.event(
                "response.output_text.done",
                item_id=message.id,
                output_index=index,
                content_index=0,
                text=done.text,
                logprobs=[],
            ),
            out.event("response.content_part.done", item_id=message.id, output_index=index, content_index=0, part=done),
            out.event("response.output_item.done", output_index=index, item=message),
        ]

    def call(self, index: int, call_id: str | None, name: str | None, arguments: str | None) -> list[bytes]:
        events: list[bytes] = []
        if self.open_call is None or self.call_index != index:
            events.extend(self._close_reasoning(False))
            events.extend(self._close_message(False))
            events.extend(self._close_call(False))
            call_id = call_id or new_id("call")
            self.open_call = self.ctx.function_call(call_id, name or "", "", "in_progress", new_id("fc"))
            self.call_index = index
            events.append(self._start(self.open_call))
        elif name and not self.open_call.name:
            self.open_call.namespace, self.open_call.name = self.ctx.translation.names.get(name, (None, name))
        if arguments:
            self.arguments.append(arguments)
            events.append(
                self.out.event(
                    "response.function_call_arguments.delta",
                    item_id=self.open_call.id,
                    output_index=len(self.output) - 1,
                    delta=arguments,
                )
            )
        return events

    def _close_call(self, cut: bool) -> list[bytes]:
        call = self.open_call
        if call is None:
            return []
        self.open_call = None
        self.call_index = None
        index = self.output.index(call)
        call.arguments = "".join(self.arguments)
        self.arguments = []
        call.status = "incomplete" if cut else "completed"
        return [
            self.out.event(
                "response.function_call_arguments.done",
                item_id=call.id,
                output_index=index,
                name=call.name,
                arguments=call.arguments,
            ),
            self.out.event("response.output_item.done", output_index=index, item=call),
        ]

    def close(self, cut: bool, call_cut: bool) -> list[bytes]:
        """Close whatever is open: the turn has ended (``cut``: by the request's limit, or an error; ``call_cut``:
        by any limit, or an error)."""
        return [*self._close_reasoning(cut), *self._close_message(cut), *self._close_call(call_cut)]


def _json(text: str) -> bytes:
    return msgspec.json.encode(text)
