"""`/v1/completions`: a prompt (text, texts, or token ids) continued as it is, with `echo` and logprobs."""

from __future__ import annotations

from typing import Any

from bitinglip.cluster import CompletionDelta, EngineClient
from bitinglip.core import InvalidInput
from bitinglip.gateway import protocol as p
from bitinglip.gateway.serving.base import Finished, Prepared, Serving
from bitinglip.gateway.serving.logprobs import extend_completion_logprobs

MAX_TOKEN_ID = 2**31


class CompletionServing(Serving):
    id_prefix = "cmpl-"

    async def prepare(self, req: p.CompletionRequest, engine: EngineClient) -> Prepared:
        prompt = req.prompt
        if prompt is None or prompt == "" or prompt == []:
            raise InvalidInput(
                "`prompt` must be a non-empty string, list of strings or list of token ids", param="prompt"
            )
        prompts: list[tuple[list[int], str | None]] = []
        if isinstance(prompt, str):
            prompts.append((await self.encode(engine, prompt), prompt))
        elif not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in prompt):
            raise InvalidInput("`prompt` must be a string, a list of strings or a list of token ids", param="prompt")
        elif all(isinstance(x, int) for x in prompt):
            ids = [int(x) for x in prompt]
            if any(not (0 <= x < MAX_TOKEN_ID) for x in ids):
                raise InvalidInput("token ids in `prompt` must be non-negative", param="prompt")
            prompts.append((ids, None))
        else:
            for text in prompt:
                if not isinstance(text, str) or not text:
                    raise InvalidInput("prompts must not be empty strings", param="prompt")
                prompts.append((await self.encode(engine, text), text))
        args = req.sampling_args(max(len(ids) for ids, _ in prompts), engine.max_model_len)
        return Prepared(
            model=req.model or "",
            engine=engine,
            prompts=prompts,
            params=engine.sampling_params(args, whole=not req.stream),
            n=req.n,
            max_tokens=args["max_tokens"],
            stream=req.stream,
            include_usage=req.include_usage,
            logprobs=req.logprobs,
            echo=req.echo,
            priority=req.priority,
        )

    def add_logprobs(self, prep: Prepared, into: dict[int, Any], index: int, out: CompletionDelta, offset: int) -> None:
        target = into.setdefault(index, p.CompletionLogprobs())
        extend_completion_logprobs(target, out, prep.engine, prep.logprobs or 0, offset)

    def response(self, prep: Prepared, request_id: str, done: Finished) -> p.CompletionResponse:
        return p.CompletionResponse(
            id=self.id_prefix + request_id,
            created=done.created,
            model=prep.model,
            choices=[
                p.CompletionChoice(
                    index=i,
                    text=(prep.prompts[i // prep.n][1] or "" if prep.echo else "") + text,
                    logprobs=done.logprobs.get(i, p.CompletionLogprobs()) if prep.logprobs is not None else None,
                    finish_reason=done.finish.get(i),
                )
                for i, text in done.texts.items()
            ],
            usage=done.usage,
        )

    def opening(self, prep: Prepared, chunk_id: str, created: int) -> list[p.CompletionResponse]:
        if not prep.echo:
            return []
        return [
            p.CompletionResponse(
                id=chunk_id,
                created=created,
                model=prep.model,
                choices=[p.CompletionChoice(index=i * prep.n + j, text=text or "")],
                usage=None,
            )
            for i, (_, text) in enumerate(prep.prompts)
            for j in range(prep.n)
        ]

    def chunk(
        self, prep: Prepared, chunk_id: str, created: int, index: int, out: CompletionDelta, offset: int
    ) -> p.CompletionResponse:
        lp = None
        if prep.logprobs is not None and out.logprobs:
            lp = p.CompletionLogprobs()
            extend_completion_logprobs(lp, out, prep.engine, prep.logprobs, offset)
        choice = p.CompletionChoice(index=index, text=out.text, logprobs=lp, finish_reason=out.finish_reason)
        return p.CompletionResponse(id=chunk_id, created=created, model=prep.model, choices=[choice], usage=None)

    def closing(self, prep: Prepared, chunk_id: str, created: int, used: p.Usage) -> p.CompletionResponse:
        return p.CompletionResponse(id=chunk_id, created=created, model=prep.model, choices=[], usage=used)
