"""`/v1/chat/completions`: messages (and tools) through the model's chat template, answers as assistant messages.

With tools, the engine's tool calling (vLLM's parser for the deployment's `tool_call_parser`) constrains the
output and reads the calls out of it; here they are put in OpenAI's shapes, whole or as streamed fragments.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bitinglip.cluster import CompletionDelta, EngineClient, EngineOutput, ToolCallDelta
from bitinglip.core import InvalidInput
from bitinglip.gateway.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    DeltaFunction,
    DeltaMessage,
    DeltaToolCall,
    FunctionCallOut,
    ToolCallOut,
)
from bitinglip.gateway.protocol.sampling import Usage
from bitinglip.gateway.serving.base import (
    Finished,
    Frame,
    Prepared,
    Serving,
    StreamContext,
    check_prompt_chars,
    clamped,
    refuse_embedding_model,
    sampling_params,
    with_reasoning,
)
from bitinglip.gateway.serving.logprobs import chat_logprobs
from bitinglip.gateway.serving.tools import check_tools, history_calls

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def message_text(message: ChatMessage, index: int) -> str:
    if message.role not in CHAT_ROLES:
        raise InvalidInput(
            f"messages[{index}].role must be one of {sorted(CHAT_ROLES)}, got {message.role!r}",
            param=f"messages.{index}.role",
        )
    content = message.content
    if content is None:
        return message.refusal or ""
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


def message_dict(message: ChatMessage, index: int) -> dict[str, Any]:
    """One message as chat templates take it (a call's arguments as an object, a tool turn with its call id)."""
    out: dict[str, Any] = {"role": message.role, "content": message_text(message, index)}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = history_calls(message, index)
    if message.tool_call_id is not None and message.role != "tool":
        raise InvalidInput(
            f"messages[{index}] has a tool_call_id but its role is {message.role!r}, not 'tool'",
            param=f"messages.{index}.tool_call_id",
        )
    if message.role == "tool":
        if not message.tool_call_id:
            raise InvalidInput(
                f"messages[{index}] has role 'tool' but no tool_call_id", param=f"messages.{index}.tool_call_id"
            )
        out["tool_call_id"] = message.tool_call_id
    return out


def _delta_calls(fragments: list[ToolCallDelta]) -> list[DeltaToolCall]:
    return [
        DeltaToolCall(
            index=f.index,
            id=f.id,
            type="function" if f.id is not None else None,
            function=DeltaFunction(name=f.name, arguments=f.arguments) if f.name or f.arguments is not None else None,
        )
        for f in fragments
    ]


class ChatServing(Serving):
    id_prefix = "chatcmpl-"

    @classmethod
    async def render(
        cls,
        messages: list[ChatMessage] | None,
        engine: EngineClient,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> tuple[list[int], str]:
        """The prompt (token ids and text) the model's chat template makes of ``messages`` (and ``tools``, and the
        template's own variables)."""
        if not messages:
            raise InvalidInput("`messages` must be a non-empty list", param="messages", code="empty_messages")
        dicts = [message_dict(m, i) for i, m in enumerate(messages)]
        # The template adds to the messages' text, never takes away: too much text is refused before rendering.
        check_prompt_chars(engine, sum(len(m["content"]) for m in dicts), "messages")
        text = engine.render_chat(dicts, tools, template_kwargs)
        return await cls.encode(engine, text, "messages"), text

    async def prepare(self, req: ChatCompletionRequest, engine: EngineClient) -> Prepared:
        return await self.prepare_chat(req, engine, "/v1/chat/completions")

    async def prepare_chat(
        self, req: ChatCompletionRequest, engine: EngineClient, route: str, *, clamp: bool = False
    ) -> Prepared:
        """``req`` checked, rendered and tokenized; also how the APIs built on chat (Responses, Messages) prepare
        theirs, with ``clamp`` (a `max_tokens` past the context's room is cut to it, not refused)."""
        refuse_embedding_model(engine, route)
        # Checking the tools' schemas takes time that grows with them (jsonschema, pure Python): off the loop.
        tools = await asyncio.to_thread(check_tools, req) if req.tools else check_tools(req)
        calls = None
        if tools is not None and tools.choice != "none":
            calls = engine.tool_calls(tools.tools, tools.choice, tools.parallel)
        ids, text = await self.render(
            req.messages, engine, tools.tools if tools is not None else None, req.template_kwargs()
        )
        args = req.sampling_args(len(ids), engine.max_model_len, self.limits, clamp=clamp)
        if req.stream:
            args["stream_interval"] = self.interval()
        if calls is not None:
            if calls.constraint is not None:
                args["structured_outputs"] = calls.constraint
            if not calls.skip_special_tokens:
                args["skip_special_tokens"] = False
        try:
            params = await sampling_params(engine, args, whole=not req.stream)
        except InvalidInput as exc:
            if exc.param == "structured_outputs" and req.response_format is not None:
                exc.param = "response_format"  # what the client sent
            elif exc.param == "structured_outputs" and calls is not None:
                exc.param = "tools"
            raise
        return Prepared(
            model=req.model or "",
            engine=engine,
            prompts=[(ids, text)],
            params=params,
            n=req.n,
            max_tokens=args["max_tokens"],
            stream=req.stream,
            include_usage=req.include_usage,
            logprobs=args.get("logprobs"),
            priority=req.priority,
            tools=calls,
            reasoning=engine.reasoning(ids),
            asked_max_tokens=clamped(req.asked_max_tokens(), args["max_tokens"]),
        )

    def add_logprobs(self, prep: Prepared, into: dict[int, Any], index: int, out: CompletionDelta, offset: int) -> None:
        into.setdefault(index, []).extend(chat_logprobs(out, prep.engine, prep.logprobs or 0))

    def _choice(self, prep: Prepared, done: Finished, index: int, text: str) -> ChatChoice:
        finish = done.finish.get(index)
        message = AssistantMessage(role="assistant", content=text)
        if prep.reasoning is not None:
            message.reasoning_content, message.content = prep.reasoning.parse(index, text)
            text = message.content or ""
        if prep.tools is not None:
            content, calls = prep.tools.parse(text, cut=finish == "length")
            message.content = content
            if calls:
                message.tool_calls = [
                    ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in calls
                ]
                finish = "tool_calls" if finish == "stop" else finish
        logprobs = ChatLogprobs(content=done.logprobs.get(index, [])) if prep.logprobs is not None else None
        return ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=finish)

    def response(self, prep: Prepared, request_id: str, done: Finished) -> ChatCompletionResponse:
        choices = [self._choice(prep, done, i, text) for i, text in done.texts.items()]
        return ChatCompletionResponse(
            id=self.id_prefix + request_id,
            created=done.created,
            model=prep.model,
            choices=choices,
            usage=with_reasoning(done.usage, prep.reasoning),
        )

    def opening(self, ctx: StreamContext) -> list[ChatCompletionChunk]:
        prep = ctx.prep
        role = [ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(prep.n)]
        return [ChatCompletionChunk(id=ctx.chunk_id, created=ctx.created, model=prep.model, choices=role)]

    def frame(self, ctx: StreamContext) -> Frame | None:
        prep = ctx.prep
        if prep.tools is not None or prep.logprobs is not None or prep.reasoning is not None:
            return None
        return Frame.of(
            ctx.chunk_id,
            ctx.created,
            prep.model,
            middle=b',"delta":{"content":',
            after_text=b'},"logprobs":null,"finish_reason":',
            tail=b'}],"object":"chat.completion.chunk","usage":null}\n\n',
        )

    def chunk(
        self, ctx: StreamContext, index: int, out: CompletionDelta, output: EngineOutput
    ) -> ChatCompletionChunk | None:
        prep = ctx.prep
        lp = None
        if prep.logprobs is not None and out.logprobs:
            lp = ChatLogprobs(content=chat_logprobs(out, prep.engine, prep.logprobs))
        finish = out.finish_reason
        text, ids = out.text, out.token_ids
        reasoning = None
        if prep.reasoning is not None:
            reasoning, answer = prep.reasoning.parse_delta(index, text, ids)
            text, ids = (answer, ids) if answer else ("", ())
        content: str | None = text
        fragments: list[ToolCallDelta] = []
        if prep.tools is not None:
            content = None  # a reasoning delta is not the tool parser's to read
            if text or finish is not None:
                content, fragments = prep.tools.parse_delta(index, text, ids, finish is not None)
            if finish == "stop" and prep.tools.called(index):
                finish = "tool_calls"
        if prep.reasoning is not None and not content:
            content = None
        if content is None and reasoning is None and not fragments and finish is None and lp is None:
            return None  # nothing yet: a reasoning marker alone, or held back (may be the start of a call)
        delta = DeltaMessage(content=content, reasoning_content=reasoning, tool_calls=_delta_calls(fragments) or None)
        choice = ChatChunkChoice(index=index, delta=delta, logprobs=lp, finish_reason=finish)
        return ChatCompletionChunk(id=ctx.chunk_id, created=ctx.created, model=prep.model, choices=[choice])

    def closing(self, ctx: StreamContext, used: Usage) -> ChatCompletionChunk:
        used = with_reasoning(used, ctx.prep.reasoning)
        return ChatCompletionChunk(id=ctx.chunk_id, created=ctx.created, model=ctx.prep.model, choices=[], usage=used)
