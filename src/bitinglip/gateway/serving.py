"""OpenAI chat and text completions on top of the cluster's engines. No Litestar in here.

The hot path per token is: take vLLM's delta, build one msgspec struct, encode it, yield bytes. No
database writes and no log lines per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from bitinglip.cluster import Cluster, Engine
from bitinglip.core.errors import BitingLipError, InvalidInput, Unavailable
from bitinglip.core.settings import GatewaySettings
from bitinglip.gateway import protocol as p

MAX_N = 128
MAX_LOGPROBS = 20
MAX_STOP = 16
CHAT_ROLES = {"system", "developer", "user", "assistant", "tool"}
DONE = b"data: [DONE]\n\n"


class Prepared(msgspec.Struct, kw_only=True):
    """A request checked, tokenized and ready for the engine."""

    kind: str  # "chat" or "completion"
    model: str
    engine: Engine
    prompts: list[tuple[list[int], str | None]]
    params: Any
    n: int
    stream: bool
    include_usage: bool
    logprobs: int | None  # top-k to return; None for no logprobs
    echo: bool = False
    priority: int = 0


def _decode(body: bytes, kind: type[msgspec.Struct]) -> Any:
    if not body.strip():
        raise InvalidInput("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = text.rsplit("`$.", 1)[1].rstrip("`") if "`$." in text else None
        raise InvalidInput(f"invalid request: {text}", param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc


def _check_range(name: str, value: float | int | None, low: float, high: float) -> None:
    if value is not None and not (low <= value <= high):
        raise InvalidInput(f"`{name}` must be between {low:g} and {high:g}, got {value}", param=name)


def _message_text(message: p.ChatMessage, index: int) -> str:
    if message.role not in CHAT_ROLES:
        raise InvalidInput(
            f"messages[{index}].role must be one of {sorted(CHAT_ROLES)}, got {message.role!r}",
            param=f"messages.{index}.role",
        )
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidInput(
                f"messages[{index}] has a content part of type {part.type!r}; only text parts are supported",
                param=f"messages.{index}.content",
            )
        texts.append(part.text)
    return "".join(texts)


class OpenAIServing:
    def __init__(self, cluster: Cluster, settings: GatewaySettings) -> None:
        self.cluster = cluster
        self.settings = settings
        self.pending = 0

    # -- models

    def list_models(self) -> p.ModelList:
        cards = []
        for name in self.cluster.served_models():
            engine = self.cluster.engine_for(name)
            cards.append(
                p.ModelCard(
                    id=name, created=int(time.time()), max_model_len=engine.max_model_len, root=str(engine.model_path)
                )
            )
        return p.ModelList(data=cards)

    # -- admission

    def check_admission(self) -> None:
        """Refuse fast past the bound instead of queueing without limit."""
        if self.pending >= self.settings.max_pending_requests:
            raise Unavailable(
                f"the server is at its limit of {self.settings.max_pending_requests} requests in flight; retry shortly",
                retry_after=1,
                code="overloaded",
            )

    @contextlib.contextmanager
    def admit(self) -> Any:
        """Count a request in flight for as long as the block runs."""
        self.check_admission()
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    # -- request preparation

    def _engine(self, model: str | None) -> Engine:
        if not model:
            raise InvalidInput("you must provide a model parameter", param="model", code="missing_model")
        return self.cluster.engine_for(model)

    def _common_params(
        self, req: p._Sampling, max_tokens: int | None, prompt_len: int, engine: Engine
    ) -> dict[str, Any]:
        _check_range("temperature", req.temperature, 0.0, 2.0)
        _check_range("top_p", req.top_p, 1e-9, 1.0)
        _check_range("presence_penalty", req.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", req.frequency_penalty, -2.0, 2.0)
        _check_range("n", req.n, 1, MAX_N)
        _check_range("min_p", req.min_p, 0.0, 1.0)
        _check_range("repetition_penalty", req.repetition_penalty, 1e-9, 2.0**31)
        if req.top_k is not None and req.top_k < -1:
            raise InvalidInput(f"`top_k` must be -1 (off) or at least 0, got {req.top_k}", param="top_k")
        if req.seed is not None and not (-(2**63) <= req.seed < 2**63):
            raise InvalidInput("`seed` must fit in a signed 64-bit integer", param="seed")
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if len(stop) > MAX_STOP:
            raise InvalidInput(f"`stop` takes at most {MAX_STOP} sequences", param="stop")
        if any(not s for s in stop):
            raise InvalidInput("`stop` sequences must not be empty", param="stop")
        limit = engine.max_model_len
        if prompt_len >= limit:
            raise InvalidInput(
                f"This model's maximum context length is {limit} tokens. However, your prompt is {prompt_len} "
                f"tokens, leaving no room for a completion. Please reduce the length of the prompt.",
                param="messages" if isinstance(req, p.ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        if max_tokens is not None:
            if max_tokens < 1:
                raise InvalidInput(f"`max_tokens` must be at least 1, got {max_tokens}", param="max_tokens")
            if prompt_len + max_tokens > limit:
                raise InvalidInput(
                    f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). "
                    "Please reduce the prompt or max_tokens.",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
        params: dict[str, Any] = {
            "n": req.n,
            "max_tokens": max_tokens if max_tokens is not None else limit - prompt_len,
            "stop": stop or None,
            "ignore_eos": req.ignore_eos,
            "seed": req.seed,
        }
        optional = {
            "temperature": req.temperature,
            "top_p": req.top_p,
            "top_k": req.top_k,
            "min_p": req.min_p,
            "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty,
            "repetition_penalty": req.repetition_penalty,
            "min_tokens": req.min_tokens,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    async def _encode(self, engine: Engine, text: str) -> list[int]:
        # Short prompts are cheaper to tokenize inline than to hand to a thread.
        if len(text) < 4096:
            return engine.encode(text)
        return await asyncio.to_thread(engine.encode, text)

    async def prepare_chat(self, body: bytes) -> Prepared:
        req: p.ChatCompletionRequest = _decode(body, p.ChatCompletionRequest)
        engine = self._engine(req.model)
        if not req.messages:
            raise InvalidInput("`messages` must be a non-empty list", param="messages", code="empty_messages")
        messages = [{"role": m.role, "content": _message_text(m, i)} for i, m in enumerate(req.messages)]
        text = engine.render_chat(messages)
        ids = await self._encode(engine, text)
        top = None
        if req.logprobs:
            top = req.top_logprobs or 0
            _check_range("top_logprobs", top, 0, MAX_LOGPROBS)
        elif req.top_logprobs:
            raise InvalidInput("`top_logprobs` needs `logprobs` set to true", param="top_logprobs")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = self._common_params(req, max_tokens, len(ids), engine)
        if top is not None:
            params["logprobs"] = top
        return Prepared(
            kind="chat",
            model=req.model or "",
            engine=engine,
            prompts=[(ids, text)],
            params=engine.sampling_params(**params),
            n=req.n,
            stream=req.stream,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            logprobs=top,
            priority=req.priority,
        )

    async def prepare_completion(self, body: bytes) -> Prepared:
        req: p.CompletionRequest = _decode(body, p.CompletionRequest)
        engine = self._engine(req.model)
        prompt = req.prompt
        if prompt is None or prompt == "" or prompt == []:
            raise InvalidInput(
                "`prompt` must be a non-empty string, list of strings or list of token ids", param="prompt"
            )
        prompts: list[tuple[list[int], str | None]] = []
        if isinstance(prompt, str):
            prompts.append((await self._encode(engine, prompt), prompt))
        elif not isinstance(prompt, list) or not all(
            isinstance(x, (str, int)) and not isinstance(x, bool) for x in prompt
        ):
            raise InvalidInput("`prompt` must be a string, a list of strings or a list of token ids", param="prompt")
        elif all(isinstance(x, int) for x in prompt):
            if any(not (0 <= x < 2**31) for x in prompt):  # type: ignore[operator]
                raise InvalidInput("token ids in `prompt` must be non-negative", param="prompt")
            prompts.append((list(prompt), None))  # type: ignore[arg-type]
        else:
            for text in prompt:
                if not isinstance(text, str) or not text:
                    raise InvalidInput("prompts must not be empty strings", param="prompt")
                prompts.append((await self._encode(engine, str(text)), str(text)))
        _check_range("logprobs", req.logprobs, 0, MAX_LOGPROBS)
        longest = max(len(ids) for ids, _ in prompts)
        params = self._common_params(req, req.max_tokens if req.max_tokens is not None else 16, longest, engine)
        if req.logprobs is not None:
            params["logprobs"] = req.logprobs
        return Prepared(
            kind="completion",
            model=req.model or "",
            engine=engine,
            prompts=prompts,
            params=engine.sampling_params(**params),
            n=req.n,
            stream=req.stream,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            logprobs=req.logprobs,
            echo=req.echo,
            priority=req.priority,
        )

    # -- generation

    def _outputs(self, prep: Prepared, request_id: str) -> AsyncIterator[tuple[int, Any]]:
        """(prompt index, RequestOutput) pairs; one prompt is iterated directly, several are merged."""
        if len(prep.prompts) == 1:
            ids, text = prep.prompts[0]
            return _tagged(0, prep.engine.generate(ids, text, prep.params, request_id, prep.priority))
        streams = [
            _tagged(i, prep.engine.generate(ids, text, prep.params, f"{request_id}-{i}", prep.priority))
            for i, (ids, text) in enumerate(prep.prompts)
        ]
        return _merge(streams)

    async def complete(self, prep: Prepared, request_id: str) -> msgspec.Struct:
        created = int(time.time())
        texts: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        logprobs: dict[int, Any] = {}
        completion_tokens = 0
        async for prompt_index, output in self._outputs(prep, request_id):
            for out in output.outputs:
                index = prompt_index * prep.n + out.index
                texts.setdefault(index, []).append(out.text)
                completion_tokens += len(out.token_ids)
                if out.finish_reason is not None:
                    finish[index] = out.finish_reason
                if prep.logprobs is not None and out.logprobs:
                    _extend_logprobs(prep, logprobs, index, out, len("".join(texts[index][:-1])))
        usage = _usage(prep, completion_tokens)
        indices = sorted(texts)
        if prep.kind == "chat":
            return p.ChatCompletionResponse(
                id=f"chatcmpl-{request_id}",
                created=created,
                model=prep.model,
                choices=[
                    p.ChatChoice(
                        index=i,
                        message=p.AssistantMessage(role="assistant", content="".join(texts[i])),
                        logprobs=p.ChatLogprobs(content=logprobs.get(i, [])) if prep.logprobs is not None else None,
                        finish_reason=finish.get(i),
                    )
                    for i in indices
                ],
                usage=usage,
            )
        return p.CompletionResponse(
            id=f"cmpl-{request_id}",
            created=created,
            model=prep.model,
            choices=[
                p.CompletionChoice(
                    index=i,
                    text=(prep.prompts[i // prep.n][1] or "" if prep.echo else "") + "".join(texts[i]),
                    logprobs=logprobs.get(i, p.CompletionLogprobs()) if prep.logprobs is not None else None,
                    finish_reason=finish.get(i),
                )
                for i in indices
            ],
            usage=usage,
        )

    async def stream(self, prep: Prepared, request_id: str) -> AsyncIterator[bytes]:
        """Server-sent events as OpenAI sends them, `data: [DONE]` last."""
        created = int(time.time())
        encode = msgspec.json.encode
        chat = prep.kind == "chat"
        chunk_id = f"chatcmpl-{request_id}" if chat else f"cmpl-{request_id}"
        completion_tokens = 0
        offsets: dict[int, int] = {}
        try:
            if chat:
                first = p.ChatCompletionChunk(
                    id=chunk_id,
                    created=created,
                    model=prep.model,
                    choices=[
                        p.ChatChunkChoice(index=i, delta=p.DeltaMessage(role="assistant", content=""))
                        for i in range(prep.n)
                    ],
                )
                yield b"data: " + encode(first) + b"\n\n"
            elif prep.echo:
                for i, (_, text) in enumerate(prep.prompts):
                    for j in range(prep.n):
                        echo = p.CompletionChoice(index=i * prep.n + j, text=text or "")
                        chunk = p.CompletionResponse(
                            id=chunk_id, created=created, model=prep.model, choices=[echo], usage=None
                        )
                        yield b"data: " + encode(chunk) + b"\n\n"
            async for prompt_index, output in self._outputs(prep, request_id):
                for out in output.outputs:
                    index = prompt_index * prep.n + out.index
                    completion_tokens += len(out.token_ids)
                    # A token that ends mid-character decodes to nothing yet: no empty event for it.
                    if not out.text and out.finish_reason is None and prep.logprobs is None:
                        continue
                    lp = None
                    if prep.logprobs is not None and out.logprobs:
                        holder: dict[int, Any] = {}
                        _extend_logprobs(prep, holder, index, out, offsets.get(index, 0))
                        lp = p.ChatLogprobs(content=holder[index]) if chat else holder[index]
                    offsets[index] = offsets.get(index, 0) + len(out.text)
                    if chat:
                        choice: Any = p.ChatChunkChoice(
                            index=index,
                            delta=p.DeltaMessage(content=out.text),
                            logprobs=lp,
                            finish_reason=out.finish_reason,
                        )
                        chunk: Any = p.ChatCompletionChunk(
                            id=chunk_id, created=created, model=prep.model, choices=[choice]
                        )
                    else:
                        choice = p.CompletionChoice(
                            index=index, text=out.text, logprobs=lp, finish_reason=out.finish_reason
                        )
                        chunk = p.CompletionResponse(
                            id=chunk_id, created=created, model=prep.model, choices=[choice], usage=None
                        )
                    yield b"data: " + encode(chunk) + b"\n\n"
            if prep.include_usage:
                usage = _usage(prep, completion_tokens)
                if chat:
                    last: Any = p.ChatCompletionChunk(
                        id=chunk_id, created=created, model=prep.model, choices=[], usage=usage
                    )
                else:
                    last = p.CompletionResponse(id=chunk_id, created=created, model=prep.model, choices=[], usage=usage)
                yield b"data: " + encode(last) + b"\n\n"
        except BitingLipError as exc:
            # Headers are gone already: the error travels as one more event, in OpenAI's envelope.
            err = p.error_response(exc.message, exc.type, exc.param, exc.code)
            yield b"data: " + encode(err) + b"\n\n"
        yield DONE


def _usage(prep: Prepared, completion_tokens: int) -> p.Usage:
    prompt_tokens = sum(len(ids) for ids, _ in prep.prompts)
    return p.Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def _token(logprob: Any, token_id: int, engine: Engine) -> tuple[str, list[int], int]:
    """A token as logprobs show it: (its text, its bytes, the length it adds to the output text).

    A token that is only part of a UTF-8 character has no text of its own; as OpenAI does, it is named by its
    bytes ("bytes:\\xe2\\x80") and its `bytes` are the real ones, so a client can join them back together.
    """
    text = getattr(logprob, "decoded_token", None)
    if text is None:
        text = engine.decode_token(token_id)
    if text and "\ufffd" not in text:
        return text, list(text.encode()), len(text)
    raw = engine.token_bytes(token_id)
    try:
        raw.decode()
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), list(raw), len(text)
    return text, list(text.encode()), len(text)  # a special token the text leaves out, or a real U+FFFD


def _extend_logprobs(prep: Prepared, into: dict[int, Any], index: int, out: Any, text_offset: int) -> None:
    """Append this delta's logprobs for choice `index`, in the chat or the completions shape."""
    chat = prep.kind == "chat"
    top_k = prep.logprobs or 0
    target = into.setdefault(index, [] if chat else p.CompletionLogprobs())
    for token_id, position in zip(out.token_ids, out.logprobs, strict=False):
        if position is None:
            continue
        sampled = position.get(token_id)
        token, raw, advance = _token(sampled, token_id, prep.engine)
        value = max(sampled.logprob, -9999.0) if sampled is not None else -9999.0
        ranked = sorted(position.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)[:top_k]
        tops = [(*_token(lp, tid, prep.engine)[:2], max(lp.logprob, -9999.0)) for tid, lp in ranked]
        if chat:
            target.append(
                p.ChatTokenLogprob(
                    token=token,
                    logprob=value,
                    bytes=raw,
                    top_logprobs=[p.TopLogprob(token=t, logprob=v, bytes=b) for t, b, v in tops],
                )
            )
        else:
            target.tokens.append(token)
            target.token_logprobs.append(value)
            target.top_logprobs.append({t: v for t, _, v in tops})
            target.text_offset.append(text_offset)
            text_offset += advance


async def _tagged(index: int, stream: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for item in stream:
            yield index, item


async def _merge(streams: list[AsyncIterator[tuple[int, Any]]]) -> AsyncIterator[tuple[int, Any]]:
    """Interleave several streams as their items arrive; closing the merge closes them all."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    end = object()

    async def pump(stream: AsyncIterator[tuple[int, Any]]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
        except BaseException as exc:
            await queue.put(exc)
        finally:
            await queue.put(end)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is end:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
