"""What chat and text completions share: admission, engine lookup, tokenizing, the generation loops.

No Litestar in here. The hot path per token is: take the engine's delta, build one msgspec struct, encode
it, yield bytes. No database writes and no log lines per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, ClassVar, Literal, Protocol, cast

import msgspec

from bitinglip.cluster import CompletionDelta, EngineClient, EngineOutput, Reasoning
from bitinglip.core import BitingLipError, FinalEvent, InvalidInput, error_response, get_logger
from bitinglip.gateway.protocol.sampling import (
    NO_OUTPUT_LIMITS,
    CompletionTokensDetails,
    OutputLimits,
    PromptTokensDetails,
    Usage,
)
from bitinglip.gateway.serving.merge import merge, tagged

log = get_logger(__name__)

DONE = b"data: [DONE]\n\n"
INLINE_TOKENIZE_CHARS = 4096  # shorter prompts are cheaper to tokenize inline than to hand to a thread


class Prepared(msgspec.Struct, kw_only=True):
    """A request checked, tokenized and ready for the engine."""

    model: str
    engine: EngineClient
    prompts: list[tuple[list[int], str | None]]  # (token ids, text when known) per prompt
    params: object  # the engine's sampling parameters
    n: int
    max_tokens: int  # per sequence, as the engine will stop
    stream: bool
    include_usage: bool
    logprobs: int | None  # top-k to return; None for no logprobs
    echo: bool = False
    score_only: bool = False  # echo with max_tokens 0: the one token the engine makes is dropped
    priority: int = 0
    tools: Any = None  # the engine's ToolCalls for a chat request with tools
    reasoning: Any = None  # the engine's Reasoning for a chat request to a model that reasons
    asked_max_tokens: int | None = None  # what the request asked for, where the server gave less (clamped)


class Codec(Protocol):
    """A wire format's half of a generation: its request prepared for the engine, the engine's output rendered."""

    async def prepare(self, req: Any, engine: EngineClient) -> Prepared: ...

    async def complete(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> msgspec.Struct: ...

    # A codec that streams also has `stream(prep, request_id, tally) -> AsyncGenerator[bytes, None]` (its events);
    # one that needs to know its caller has `bind(req, call) -> req` (Responses: whose stored responses it reads),
    # which the pipeline calls first.


class StreamContext:
    """One streamed response: its constants (the request prepared, the chunk id, the creation time) and what it
    has sent so far, handed to each of a codec's stream hooks."""

    __slots__ = ("chunk_id", "created", "echoed", "offsets", "prep")

    def __init__(self, prep: Prepared, chunk_id: str, created: int) -> None:
        self.prep = prep
        self.chunk_id = chunk_id
        self.created = created
        self.offsets: dict[int, int] = {}  # per choice: the length of the text sent so far
        self.echoed: set[int] = set()  # choices whose echoed prompt has gone out

    def offset(self, index: int) -> int:
        """How much text choice ``index`` has sent before the delta being rendered."""
        return self.offsets.get(index, 0)


class Frame:
    """A stream's plain chunk with its constant parts encoded once: only the choice, text and finish reason vary.

    The bytes are exactly those of the chunk's struct encoded (a unit test holds them to it), without building
    three structs per token.
    """

    __slots__ = ("after_text", "head", "middle", "tail")

    def __init__(self, head: bytes, middle: bytes, after_text: bytes, tail: bytes) -> None:
        self.head = head  # `data: {...,"choices":[{"index":`
        self.middle = middle  # from the index to the text
        self.after_text = after_text  # from the text to the finish reason
        self.tail = tail  # from the finish reason to the end of the event

    @classmethod
    def of(cls, chunk_id: str, created: int, model: str, middle: bytes, after_text: bytes, tail: bytes) -> Frame:
        """The frame of one stream's chunks: the envelope (id, created, model) is the same for every kind."""
        head = b'data: {"id":%s,"created":%d,"model":%s,"choices":[{"index":' % (
            msgspec.json.encode(chunk_id),
            created,
            msgspec.json.encode(model),
        )
        return cls(head, middle, after_text, tail)

    def event(self, index: int, text: str, finish: str | None) -> bytes:
        encode = msgspec.json.encode
        reason = b"null" if finish is None else encode(finish)
        return b"".join((self.head, str(index).encode(), self.middle, encode(text), self.after_text, reason, self.tail))


class Finished(msgspec.Struct, kw_only=True):
    """What a whole (non-streaming) generation made, per choice index."""

    created: int
    texts: dict[int, str]
    finish: dict[int, str | None]
    logprobs: dict[int, Any]  # each kind's own logprobs shape
    usage: Usage
    prompt_logprobs: dict[int, Any] = msgspec.field(default_factory=dict)  # per prompt, when asked for
    stop_strings: dict[int, str] = msgspec.field(default_factory=dict)  # the stop string that ended a choice


class Tally:
    """What a generation made, filled in as it runs; read when the request ends (limits, usage, metrics)."""

    __slots__ = ("cached", "completion_tokens", "error", "first_token_at", "on_first")

    def __init__(self, on_first: Callable[[], None] | None = None) -> None:
        self.completion_tokens = 0
        self.cached: dict[int, int] = {}  # per prompt: its tokens the engine's prefix cache held, where it says
        self.first_token_at: float | None = None  # time.perf_counter() at the first output
        self.error = False  # ended with an error event (the stream had started: the status is 200)
        self.on_first = on_first

    def cached_from(self, prompt_index: int, output: EngineOutput) -> None:
        if (cached := output.num_cached_tokens) is not None:
            self.cached[prompt_index] = cached

    @property
    def cached_tokens(self) -> int | None:
        return sum(self.cached.values()) if self.cached else None

    def first(self) -> None:
        self.first_token_at = time.perf_counter()
        if self.on_first is not None:
            self.on_first()


MAX_TOKEN_ID = 2**31
# The "auto" stream interval: 1 while this process sends fewer than AUTO_FROM streams, then one more token per
# event for every AUTO_PER_TOKEN streams, AUTO_MAX at most: each event costs the API process the same whatever
# it carries (docs/performance.md has the figures).
AUTO_FROM = 32
AUTO_PER_TOKEN = 8
AUTO_MAX = 8


def token_ids(value: list[Any], param: str) -> list[int]:
    """A prompt or input given as token ids, checked (the engine checks them against its vocabulary)."""
    if not value or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < MAX_TOKEN_ID for x in value):
        raise InvalidInput(f"`{param}` must be a non-empty list of non-negative token ids", param=param)
    return value


async def sampling_params(engine: EngineClient, args: dict[str, Any], *, whole: bool) -> object:
    """The engine's sampling parameters. A constraint is compiled to check it, in time that grows with its size:
    that runs off the event loop."""
    if "structured_outputs" in args:
        return await asyncio.to_thread(functools.partial(engine.sampling_params, args, whole=whole))
    return engine.sampling_params(args, whole=whole)


def check_prompt_chars(engine: EngineClient, chars: int, param: str) -> None:
    """Refuse, before any tokenizing, a text too long to fit the context whatever its tokens."""
    if chars > engine.max_prompt_chars:
        raise InvalidInput(
            f"This model's maximum context length is {engine.max_model_len} tokens. However, `{param}` is "
            f"{chars:,} characters: more than any {engine.max_model_len} tokens of this model can hold. Please "
            "shorten it.",
            param=param,
            code="context_length_exceeded",
        )


def refuse_embedding_model(engine: EngineClient, route: str) -> None:
    if engine.embedding:
        raise InvalidInput(
            f"model {engine.served_name} is an embedding model: it serves /v1/embeddings, not {route}",
            param="model",
            code="wrong_model_kind",
        )


def clamped(asked: int | None, given: int) -> int | None:
    """What the request asked for when the server gives it fewer tokens (None when it gets what it asked)."""
    return asked if asked is not None and given < asked else None


def with_reasoning(used: Usage, reasoning: Reasoning | None) -> Usage:
    """``used`` with the tokens of reasoning among its completion tokens, where the model reasons."""
    if reasoning is None:
        return used
    details = CompletionTokensDetails(reasoning_tokens=min(reasoning.tokens(), used.completion_tokens))
    return msgspec.structs.replace(used, completion_tokens_details=details)


def usage(prep: Prepared, completion_tokens: int, cached_tokens: int | None = None) -> Usage:
    prompt_tokens = sum(len(ids) for ids, _ in prep.prompts)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=None if cached_tokens is None else PromptTokensDetails(cached_tokens=cached_tokens),
    )


class Serving(ABC):
    """One kind of generation (chat or text). Subclasses say how to prepare a request and shape its output."""

    id_prefix: str  # of the response id, before the request id: "chatcmpl-" or "cmpl-"
    # Streams this process is sending now, over every model and both kinds: what the "auto" interval reads. Not
    # the engines' own counts: those are a step old, and miss requests the process holds before and after them.
    open_streams: ClassVar[int] = 0

    def __init__(
        self, stream_interval: int | Literal["auto"] = "auto", limits: OutputLimits = NO_OUTPUT_LIMITS
    ) -> None:
        self.stream_interval = stream_interval
        self.limits = limits

    def interval(self) -> int:
        """Tokens of one choice a streamed event carries at most, for a request admitted now.

        Each event costs the API process the same whatever it carries (an engine output, a chunk, a socket
        write), and with many streams open that work is what holds the engines back: "auto" sends every token
        while fewer than AUTO_FROM streams are open, then one event per up to AUTO_MAX tokens.
        """
        if self.stream_interval != "auto":
            return self.stream_interval
        streams = Serving.open_streams
        return 1 if streams < AUTO_FROM else min(AUTO_MAX, streams // AUTO_PER_TOKEN)

    @staticmethod
    async def encode(engine: EngineClient, text: str, param: str) -> list[int]:
        """Token ids of a prompt; one too long for any context is refused unread, a long one tokenized off the loop."""
        check_prompt_chars(engine, len(text), param)
        if len(text) < INLINE_TOKENIZE_CHARS:
            return engine.encode(text)
        return await asyncio.to_thread(engine.encode, text)

    # -- what each kind says

    @abstractmethod
    def response(self, prep: Prepared, request_id: str, done: Finished) -> msgspec.Struct:
        """The whole (non-streaming) response."""

    @abstractmethod
    def add_logprobs(self, prep: Prepared, into: dict[int, Any], index: int, out: CompletionDelta, offset: int) -> None:
        """Accumulate one delta's logprobs for choice ``index`` (whose text so far is ``offset`` long)."""

    @abstractmethod
    def opening(self, ctx: StreamContext) -> Sequence[msgspec.Struct]:
        """Chunks sent before the first token (chat: the role; completions: the echoed prompt)."""

    @abstractmethod
    def chunk(
        self, ctx: StreamContext, index: int, out: CompletionDelta, output: EngineOutput
    ) -> msgspec.Struct | None:
        """The chunk for one delta ``out`` of choice ``index`` (of engine ``output``); None: nothing to send yet."""

    def frame(self, ctx: StreamContext) -> Frame | None:
        """The frame of this stream's chunks when every one of them is plain; None: each is built as a struct."""
        return None

    @abstractmethod
    def closing(self, ctx: StreamContext, used: Usage) -> msgspec.Struct:
        """The usage chunk (no choices) sent last when `stream_options.include_usage` is set."""

    # -- the loops

    def outputs(self, prep: Prepared, request_id: str) -> AsyncGenerator[tuple[int, EngineOutput], None]:
        """(prompt index, output) pairs; one prompt is iterated directly, several are merged."""
        if len(prep.prompts) == 1:
            ids, text = prep.prompts[0]
            return tagged(0, prep.engine.generate(ids, text, prep.params, request_id, prep.priority))
        streams = [
            tagged(i, prep.engine.generate(ids, text, prep.params, f"{request_id}-{i}", prep.priority))
            for i, (ids, text) in enumerate(prep.prompts)
        ]
        return merge(streams)

    async def complete(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> msgspec.Struct:
        return self.response(prep, request_id, await self.finished(prep, request_id, tally))

    async def finished(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> Finished:
        """What a whole generation made, before it is put in a response's shape."""
        tally = tally or Tally()
        created = int(time.time())
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        logprobs: dict[int, Any] = {}
        prompt_logprobs: dict[int, Any] = {}
        stop_strings: dict[int, str] = {}
        completion_tokens = 0
        # No first-token time here: a whole response asks the engine for its final output only.
        async for prompt_index, output in self.outputs(prep, request_id):
            tally.cached_from(prompt_index, output)
            if output.prompt_logprobs is not None:
                prompt_logprobs[prompt_index] = output.prompt_logprobs
            for out in output.outputs:
                index = prompt_index * prep.n + out.index
                parts = texts.setdefault(index, [])
                if prep.logprobs is not None and out.logprobs:
                    self.add_logprobs(prep, logprobs, index, out, sum(map(len, parts)))
                parts.append(out.text)
                completion_tokens += 0 if prep.score_only else len(out.token_ids)
                tally.completion_tokens = completion_tokens
                if out.finish_reason is not None:
                    finish[index] = out.finish_reason
                    if isinstance(out.stop_reason, str):
                        stop_strings[index] = out.stop_reason
        return Finished(
            created=created,
            texts={index: "".join(parts) for index, parts in sorted(texts.items())},
            finish=finish,
            logprobs=logprobs,
            usage=usage(prep, completion_tokens, tally.cached_tokens),
            prompt_logprobs=prompt_logprobs,
            stop_strings=stop_strings,
        )

    async def stream(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> AsyncGenerator[bytes, None]:
        """Server-sent events as OpenAI sends them, `data: [DONE]` last."""
        tally = tally or Tally()
        created = int(time.time())
        encode = msgspec.json.encode
        chunk_id = self.id_prefix + request_id
        completion_tokens = 0
        ctx = StreamContext(prep, chunk_id, created)
        offsets = ctx.offsets
        ended = False
        frame = self.frame(ctx)
        # The last choice's final event leaves with what follows it ([DONE], usage) in one write.
        unfinished = len(prep.prompts) * prep.n
        held: list[bytes] = []
        # One prompt (the usual case) is read straight from the engine, without a tagging generator per output.
        single = len(prep.prompts) == 1
        source: AsyncGenerator[Any, None]
        if single:
            ids, text = prep.prompts[0]
            source = cast(Any, prep.engine.generate(ids, text, prep.params, request_id, prep.priority))
        else:
            source = cast(Any, self.outputs(prep, request_id))
        Serving.open_streams += 1
        try:
            for opening in self.opening(ctx):
                yield b"data: " + encode(opening) + b"\n\n"
            async with contextlib.aclosing(source):
                async for item in source:
                    prompt_index, output = (0, item) if single else item
                    if tally.first_token_at is None:
                        tally.first()
                        tally.cached_from(prompt_index, output)
                    elif not single and prompt_index not in tally.cached:
                        tally.cached_from(prompt_index, output)
                    for out in output.outputs:
                        index = prompt_index * prep.n + out.index
                        completion_tokens += 0 if prep.score_only else len(out.token_ids)
                        # A token that ends mid-character decodes to nothing yet: no empty event for it.
                        if not out.text and out.finish_reason is None and prep.logprobs is None:
                            continue
                        if frame is not None:
                            event = frame.event(index, out.text, out.finish_reason)
                        else:
                            chunk = self.chunk(ctx, index, out, output)
                            offsets[index] = offsets.get(index, 0) + len(out.text)
                            if chunk is None:
                                continue
                            event = b"data: " + encode(chunk) + b"\n\n"
                        if out.finish_reason is not None:
                            unfinished -= 1
                        if unfinished:
                            yield event
                        else:
                            held.append(event)
            if prep.include_usage:
                usage_chunk = self.closing(ctx, usage(prep, completion_tokens, tally.cached_tokens))
                held.append(b"data: " + encode(usage_chunk) + b"\n\n")
            ended = True
        except BitingLipError as exc:
            ended = True
            tally.error = True
            # Headers are gone already: the error travels as one more event, in OpenAI's envelope.
            held.append(b"data: " + encode(error_response(exc.message, exc.type, exc.param, exc.code)) + b"\n\n")
        finally:
            Serving.open_streams -= 1
            tally.completion_tokens = completion_tokens
            if not ended:  # closed early: the client went away (its engine request is aborted on the way out)
                log.info("request.client_gone", engine_request_id=request_id, completion_tokens=completion_tokens)
        yield FinalEvent(b"".join(held) + DONE)
