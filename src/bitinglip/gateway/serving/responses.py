"""`/v1/responses`: OpenAI's Responses API as a codec over chat.

`prepare` turns the request (and, with `previous_response_id`, the stored turns it continues) into a chat request
(responses_request.py) that `ChatServing.prepare_chat` checks, renders and tokenizes; `complete` makes one
`whole_turn` a response object, `stream` makes `turn_deltas` OpenAI's Responses events. A stored request (`store`,
the default) is kept with its response (`ResponseStore`) before the answer's last byte leaves.

Tools: `function` tools as they are; a `namespace` tool's functions are shown to the model as `<namespace>__<name>`
(OpenAI's tool names allow letters, digits, `_` and `-`, so the two parts stay readable and a double underscore
rarely clashes) and its calls come back split again (`name`, `namespace`). Hosted tools the server cannot run
(`web_search`, `file_search`, `mcp`, ...) are left out of the prompt, and said so in a log line.

A model that reasons (its deployment names a `reasoning_parser`) answers with a `reasoning` item first, its whole
reasoning in `content` (`reasoning_text`; no summary, nothing encrypted), streamed as `response.reasoning_text.*`.
`reasoning.effort: "none"` turns its thinking off. Reasoning items sent back in `input` are left out of the prompt.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from bitinglip.cluster import EngineClient, ToolCall
from bitinglip.core import BitingLipError, FinalEvent, InvalidInput, get_logger
from bitinglip.gateway.protocol.responses import (
    IncompleteDetails,
    InputTokensDetails,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputText,
    OutputTokensDetails,
    ReasoningText,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from bitinglip.gateway.response_store import ResponseStore, Viewer
from bitinglip.gateway.serving.base import Prepared, Tally
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.responses_request import ResponsesCall, Translation, new_id, translate
from bitinglip.gateway.serving.turns import prompt_tokens, turn_deltas, whole_turn

if TYPE_CHECKING:
    from bitinglip.gateway.pipeline import Call

log = get_logger(__name__)

ROUTE = "/v1/responses"


@dataclass(slots=True)
class Context:
    """What a prepared request keeps for rendering its answer: the request, its translation, and its ids."""

    request: ResponsesRequest
    translation: Translation
    owner: str
    id: str
    created_at: int
    own_limit: bool  # the output limit is the request's `max_output_tokens`, not one of the server's caps

    def cut(self, finish: str | None) -> bool:
        """Whether a turn that ended so is `incomplete`: only when the request's own limit cut it. A cut by the
        server's caps (its default when the request names no limit, its ceiling, the context's room) is answered
        `completed`: the client asked for no such limit, and Codex fails a whole turn on `incomplete`."""
        if finish != "length":
            return False
        if not self.own_limit:
            log.info("responses.cut_by_server_cap", response_id=self.id, asked=self.request.max_output_tokens)
        return self.own_limit

    def function_call(self, call_id: str, shown: str, arguments: str, status: str, item_id: str) -> OutputFunctionCall:
        namespace, name = self.translation.names.get(shown, (None, shown))
        return OutputFunctionCall(
            id=item_id, call_id=call_id, name=name, arguments=arguments, status=status, namespace=namespace
        )

    def response(
        self, status: str, output: list[OutputItem], usage: ResponseUsage | None, error: ResponseError | None = None
    ) -> ResponseObject:
        req = self.request
        text: dict[str, Any] = {"format": {"type": "text"}}
        if req.text is not None:
            text = msgspec.to_builtins(req.text)
            text.setdefault("format", {"type": "text"})
        finished = status in ("completed", "incomplete", "failed")
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            model=req.model or "",
            status=status,
            output=output,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            max_tool_calls=req.max_tool_calls,
            parallel_tool_calls=req.parallel_tool_calls is not False,
            previous_response_id=req.previous_response_id,
            reasoning=req.reasoning,
            store=req.store,
            background=bool(req.background),
            temperature=req.temperature if req.temperature is not None else 1.0,
            top_p=req.top_p if req.top_p is not None else 1.0,
            text=text,
            tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
            tools=req.tools or [],
            truncation=req.truncation or "disabled",
            usage=usage,
            user=req.user,
            metadata=req.metadata or {},
            prompt_cache_key=req.prompt_cache_key,
            safety_identifier=req.safety_identifier,
            service_tier=req.service_tier or "default",
            completed_at=int(time.time()) if finished else None,
        )


class ResponsesPrepared(Prepared, kw_only=True):
    """A Responses request prepared as chat, with what its answer is rendered from."""

    context: Context


def usage_of(input_tokens: int, output_tokens: int, reasoning_tokens: int, cached_tokens: int) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
    )


class ResponsesServing:
    """The `responses` codec (`OpenAIServing.codecs`)."""

    def __init__(self, chat: ChatServing, store: ResponseStore) -> None:
        self.chat = chat
        self.store = store

    def bind(self, req: ResponsesRequest, call: Call) -> ResponsesCall:
        """The request joined to its caller: a live request's key (an admin key, or none while auth is off, sees
        every stored response), or the key that queued a background one (its own only)."""
        if call.background:
            return ResponsesCall(req, Viewer(owner=call.owner, everything=False))
        key = call.state.get("key")
        if key is None:
            return ResponsesCall(req, Viewer(owner="", everything=True))
        return ResponsesCall(req, Viewer(owner=key.id, everything=key.scope == "admin"))

    async def prepare(self, call: ResponsesCall, engine: EngineClient) -> ResponsesPrepared:
        req = call.request
        if req.background and not req.store:
            raise InvalidInput(
                "`background` needs `store`: a background response is read back by its id", param="background"
            )
        history = await self.store.chain(req.previous_response_id, call.viewer) if req.previous_response_id else []
        tr = translate(req, history)
        if not tr.chat.messages:
            raise InvalidInput("`input` must be a string or a non-empty list of items", param="input")
        try:
            prep = await self.chat.prepare_chat(tr.chat, engine, ROUTE, clamp=True)
        except InvalidInput as exc:
            exc.param = tr.param(exc.param)
            raise
        own_limit = req.max_output_tokens is not None and prep.asked_max_tokens is None
        context = Context(req, tr, call.viewer.owner, new_id("resp"), int(time.time()), own_limit)
        return ResponsesPrepared(**msgspec.structs.asdict(prep), context=context)

    async def _keep(self, ctx: Context, response: ResponseObject) -> None:
        if ctx.request.store:
            await self.store.save(ctx.owner, response, ctx.translation.items)

    async def complete(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> ResponseObject:
        assert isinstance(prep, ResponsesPrepared)
        ctx = prep.context
        turn = await whole_turn(self.chat, prep, request_id, tally or Tally())
        cut = ctx.cut(turn.finish)
        output: list[OutputItem] = []
        if turn.reasoning:
            # Cut while still reasoning (nothing after it): the reasoning is what was cut.
            status = "incomplete" if cut and not turn.text and not turn.calls else "completed"
            output.append(OutputReasoning(id=new_id("rs"), status=status, content=[ReasoningText(text=turn.reasoning)]))
        if turn.text:
            status = "incomplete" if cut and not turn.calls else "completed"
            output.append(OutputMessage(id=new_id("msg"), status=status, content=[OutputText(text=turn.text)]))
        output.extend(_call_item(ctx, call) for call in turn.calls)
        usage = usage_of(turn.prompt_tokens, turn.completion_tokens, turn.reasoning_tokens, turn.cached_tokens)
        response = ctx.response("incomplete" if cut else "completed", output, usage)
        await self._keep(ctx, response)
        return response

    async def stream(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> AsyncGenerator[bytes, None]:
        assert isinstance(prep, ResponsesPrepared)
        tally = tally or Tally()
        ctx = prep.context
        out = _EventWriter()
        items = _OpenItems(ctx, out)
        yield out.event("response.created", response=ctx.response("in_progress", [], None))
        yield out.event("response.in_progress", response=ctx.response("in_progress", [], None))
        finish: str | None = None
        failed: BitingLipError | None = None
        try:
            # Closed at once when the client leaves (this generator is closed): that aborts the engine request.
            async with contextlib.aclosing(turn_deltas(prep, request_id, tally)) as deltas:
                async for delta in deltas:
                    if delta.reasoning:
                        for event in items.reasoning(delta.reasoning):
                            yield event
                    if delta.text:
                        if items.message is not None:  # the hot path: one more piece of an open message
                            yield items.delta(delta.text)
                        else:
                            for event in items.text(delta.text):
                                yield event
                    for fragment in delta.calls:
                        for event in items.call(fragment.index, fragment.id, fragment.name, fragment.arguments):
                            yield event
                    if delta.finish is not None:
                        finish = delta.finish
        except BitingLipError as exc:
            failed = exc
            tally.error = True
        cut = ctx.cut(finish)
        # A call still open when the tokens ran out is unfinished, whichever limit it was.
        closing = items.close(cut or failed is not None, finish == "length" or failed is not None)
        thought = prep.reasoning.tokens() if prep.reasoning is not None else 0
        usage = usage_of(
            prompt_tokens(prep),
            tally.completion_tokens,
            min(thought, tally.completion_tokens),
            tally.cached_tokens or 0,
        )
        if failed is not None:
            # The response's error code is one of OpenAI's few; the `error` event carries the server's own.
            code = "rate_limit_exceeded" if failed.status == 429 else "server_error"
            error = ResponseError(code=code, message=failed.message)
            response = ctx.response("failed", items.output, usage, error)
            closing.append(out.event("error", code=failed.code, message=failed.message, param=failed.param))
            closing.append(out.event("response.failed", response=response))
        else:
            response = ctx.response("incomplete" if cut else "completed", items.output, usage)
            kind = "response.incomplete" if cut else "response.completed"
            closing.append(out.event(kind, response=response))
        await self._keep(ctx, response)
        yield FinalEvent(b"".join(closing))


def _call_item(ctx: Context, call: ToolCall) -> OutputFunctionCall:
    return ctx.function_call(call.id, call.name, call.arguments, "completed", new_id("fc"))


class _EventWriter:
    """Server-sent events as OpenAI's Responses stream has them: an `event:` line naming the type, then the JSON
    with `type` first and `sequence_number` last, counting from 0."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        body = msgspec.json.encode({"type": kind, **fields, "sequence_number": self.seq})
        self.seq += 1
        return b"event: %s\ndata: %s\n\n" % (kind.encode(), body)


class _OpenItems:
    """The output items of a streamed response: at most one open at a time (a message, or a call whose arguments
    are arriving); a change of kind closes the one open. Text deltas, the hot path, go out through a prefix built
    once per message."""

    def __init__(self, ctx: Context, out: _EventWriter) -> None:
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
