"""What the APIs built on chat share (OpenAI's Responses, Anthropic's Messages): one assistant turn.

Each of them turns its request into a chat request (messages, tools, sampling) that `ChatServing.prepare_chat`
checks, renders and tokenizes, with `clamp` (an output limit past the context's room is cut to it, not refused).
The engine's output comes back as one turn: its text and its tool calls, whole (`whole_turn`) or as deltas
(`turn_deltas`), which each API renders in its own shapes and events. Only one choice: neither API has `n`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from bitinglip.cluster import EngineOutput, ToolCall, ToolCallDelta
from bitinglip.core import BitingLipError, get_logger
from bitinglip.gateway.protocol.sampling import Usage
from bitinglip.gateway.serving.base import Prepared, Serving, Tally
from bitinglip.gateway.serving.chat import ChatServing

log = get_logger(__name__)


@dataclass(slots=True)
class Turn:
    """A whole assistant turn."""

    text: str | None
    calls: list[ToolCall]
    finish: str  # "stop", "length", "tool_calls", ...
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None  # the request's stop sequence that ended it (finish "stop")
    reasoning: str | None = None  # the model's reasoning before its answer (a model that reasons)
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # of the prompt's, held by the engine's prefix cache


@dataclass(slots=True)
class TurnDelta:
    """What one engine step added to a streamed turn: text, call fragments, and the finish reason at the end."""

    text: str | None = None
    calls: list[ToolCallDelta] = field(default_factory=list)
    finish: str | None = None
    stop_sequence: str | None = None  # with finish "stop": the request's stop sequence that ended it
    reasoning: str | None = None  # reasoning text, which comes before any answer text or call


def prompt_tokens(prep: Prepared) -> int:
    return len(prep.prompts[0][0])


async def whole_turn(chat: ChatServing, prep: Prepared, request_id: str, tally: Tally) -> Turn:
    """The whole turn, read as chat reads it (calls finished before a token limit's cut are kept)."""
    done = await chat.finished(prep, request_id, tally)
    response = chat.response(prep, request_id, done)
    choice = response.choices[0]
    calls = [
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
        for call in choice.message.tool_calls or []
    ]
    return Turn(
        text=choice.message.content or None,
        calls=calls,
        finish=choice.finish_reason or "stop",
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        stop_sequence=done.stop_strings.get(0) if choice.finish_reason == "stop" else None,
        reasoning=choice.message.reasoning_content,
        reasoning_tokens=reasoning_tokens(response.usage),
        cached_tokens=tally.cached_tokens or 0,
    )


def reasoning_tokens(used: Usage) -> int:
    details = used.completion_tokens_details
    return details.reasoning_tokens if details is not None else 0


async def turn_deltas(prep: Prepared, request_id: str, tally: Tally) -> AsyncGenerator[TurnDelta, None]:
    """The turn as it is made; `tally` counts its tokens. Closing this early aborts the engine request."""
    ids, text = prep.prompts[0]
    source: AsyncGenerator[EngineOutput, None] = prep.engine.generate(ids, text, prep.params, request_id, prep.priority)
    tools, reasoning = prep.tools, prep.reasoning
    ended = False
    Serving.open_streams += 1
    try:
        async with contextlib.aclosing(source):
            async for output in source:
                if tally.first_token_at is None:
                    tally.first()
                    tally.cached_from(0, output)
                for out in output.outputs:
                    tally.completion_tokens += len(out.token_ids)
                    finish = out.finish_reason
                    stop = out.stop_reason if finish == "stop" and isinstance(out.stop_reason, str) else None
                    text, delta_ids, thought = out.text, out.token_ids, None
                    if reasoning is not None:
                        thought, answer = reasoning.parse_delta(0, text, delta_ids)
                        text, delta_ids = (answer, delta_ids) if answer else ("", ())
                    if tools is None:
                        if text or thought or finish is not None:
                            yield TurnDelta(text or None, [], finish, stop, thought)
                        continue
                    content, fragments = None, []
                    if text or finish is not None:  # a reasoning delta is not the tool parser's to read
                        content, fragments = tools.parse_delta(0, text, delta_ids, finish is not None)
                    if finish == "stop" and tools.called(0):
                        finish, stop = "tool_calls", None
                    if content or fragments or thought or finish is not None:
                        yield TurnDelta(content, fragments, finish, stop, thought)
        ended = True
    except BitingLipError:
        ended = True  # the engine refused or failed it: the API's stream says so, the client did not leave
        raise
    finally:
        Serving.open_streams -= 1
        if not ended:  # closed early: the client went away (its engine request is aborted on the way out)
            log.info("request.client_gone", engine_request_id=request_id, completion_tokens=tally.completion_tokens)
