"""`/v1/chat/completions`: messages through the model's chat template, answers as assistant messages."""

from __future__ import annotations

from typing import Any

from bitinglip.cluster import CompletionDelta, EngineClient
from bitinglip.core import InvalidInput
from bitinglip.gateway import protocol as p
from bitinglip.gateway.serving.base import Finished, Prepared, Serving
from bitinglip.gateway.serving.logprobs import chat_logprobs

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def message_text(message: p.ChatMessage, index: int) -> str:
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


class ChatServing(Serving):
    id_prefix = "chatcmpl-"

    @classmethod
    async def render(cls, messages: list[p.ChatMessage] | None, engine: EngineClient) -> tuple[list[int], str]:
        """The prompt (token ids and text) the model's chat template makes of ``messages``."""
        if not messages:
            raise InvalidInput("`messages` must be a non-empty list", param="messages", code="empty_messages")
        text = engine.render_chat([{"role": m.role, "content": message_text(m, i)} for i, m in enumerate(messages)])
        return await cls.encode(engine, text), text

    async def prepare(self, req: p.ChatCompletionRequest, engine: EngineClient) -> Prepared:
        ids, text = await self.render(req.messages, engine)
        args = req.sampling_args(len(ids), engine.max_model_len)
        try:
            params = engine.sampling_params(args, whole=not req.stream)
        except InvalidInput as exc:
            if exc.param == "structured_outputs" and req.response_format is not None:
                exc.param = "response_format"  # what the client sent
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
        )

    def add_logprobs(self, prep: Prepared, into: dict[int, Any], index: int, out: CompletionDelta, offset: int) -> None:
        into.setdefault(index, []).extend(chat_logprobs(out, prep.engine, prep.logprobs or 0))

    def response(self, prep: Prepared, request_id: str, done: Finished) -> p.ChatCompletionResponse:
        return p.ChatCompletionResponse(
            id=self.id_prefix + request_id,
            created=done.created,
            model=prep.model,
            choices=[
                p.ChatChoice(
                    index=i,
                    message=p.AssistantMessage(role="assistant", content=text),
                    logprobs=p.ChatLogprobs(content=done.logprobs.get(i, [])) if prep.logprobs is not None else None,
                    finish_reason=done.finish.get(i),
                )
                for i, text in done.texts.items()
            ],
            usage=done.usage,
        )

    def opening(self, prep: Prepared, chunk_id: str, created: int) -> list[p.ChatCompletionChunk]:
        role = [p.ChatChunkChoice(index=i, delta=p.DeltaMessage(role="assistant", content="")) for i in range(prep.n)]
        return [p.ChatCompletionChunk(id=chunk_id, created=created, model=prep.model, choices=role)]

    def chunk(
        self, prep: Prepared, chunk_id: str, created: int, index: int, out: CompletionDelta, offset: int
    ) -> p.ChatCompletionChunk:
        lp = None
        if prep.logprobs is not None and out.logprobs:
            lp = p.ChatLogprobs(content=chat_logprobs(out, prep.engine, prep.logprobs))
        choice = p.ChatChunkChoice(
            index=index, delta=p.DeltaMessage(content=out.text), logprobs=lp, finish_reason=out.finish_reason
        )
        return p.ChatCompletionChunk(id=chunk_id, created=created, model=prep.model, choices=[choice])

    def closing(self, prep: Prepared, chunk_id: str, created: int, used: p.Usage) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(id=chunk_id, created=created, model=prep.model, choices=[], usage=used)
