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
from bitinglip.gateway.serving.responses_stream import EventWriter, OpenItems
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
        out = EventWriter()
        items = OpenItems(ctx, out)
        # The two opening events carry the same response: encoded once, sent in one write.
        opening = msgspec.Raw(msgspec.json.encode(ctx.response("in_progress", [], None)))
        yield out.event("response.created", response=opening) + out.event("response.in_progress", response=opening)
        finish: str | None = None
        failed: BitingLipError | None = None
        try:
            # Closed at once when the client leaves (this generator is closed): that aborts the engine request.
            async with contextlib.aclosing(turn_deltas(prep, request_id, tally)) as deltas:
                async for delta in deltas:
                    if delta.text and items.message is not None and not delta.calls and not delta.reasoning:
                        yield items.delta(delta.text)  # the hot path: one more piece of an open message
                    else:
                        # What one engine step makes leaves in one write, however many events it takes.
                        events = items.reasoning(delta.reasoning) if delta.reasoning else []
                        if delta.text:
                            events.extend(items.text(delta.text))
                        for fragment in delta.calls:
                            events.extend(items.call(fragment.index, fragment.id, fragment.name, fragment.arguments))
                        if events:
                            yield b"".join(events)
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
