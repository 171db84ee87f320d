"""`/v1/completions`: a prompt (text, texts, token ids, or lists of them) continued as it is, with `echo` and logprobs.

With `echo` and `logprobs`, the prompt's own tokens are scored too (the first gets null: nothing predicts it) and
`text_offset` counts from the start of the echoed prompt; with `max_tokens: 0` as well, only the prompt is scored.
That is how evaluation harnesses compute log-likelihoods.
"""

from __future__ import annotations

from typing import Any

from bitinglip.cluster import CompletionDelta, EngineClient, EngineOutput
from bitinglip.core import InvalidInput
from bitinglip.gateway.protocol.completion import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from bitinglip.gateway.protocol.sampling import Usage
from bitinglip.gateway.serving.base import (
    Finished,
    Frame,
    Prepared,
    Serving,
    StreamContext,
    clamped,
    refuse_embedding_model,
    sampling_params,
    token_ids,
)
from bitinglip.gateway.serving.logprobs import extend_completion_logprobs

MAX_PROMPTS = 2048
PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


class CompletionServing(Serving):
    id_prefix = "cmpl-"

    async def _prompts(self, prompt: Any, engine: EngineClient) -> list[tuple[list[int], str | None]]:
        if prompt is None or prompt == "" or prompt == []:
            raise InvalidInput(f"`prompt` must be non-empty: {PROMPT_SHAPES}", param="prompt")
        if isinstance(prompt, str):
            return [(await self.encode(engine, prompt, "prompt"), prompt)]
        if all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
            return [(token_ids(prompt, "prompt"), None)]
        if len(prompt) > MAX_PROMPTS:
            raise InvalidInput(f"`prompt` takes at most {MAX_PROMPTS} prompts", param="prompt")
        prompts: list[tuple[list[int], str | None]] = []
        for i, item in enumerate(prompt):
            if isinstance(item, str) and item:
                prompts.append((await self.encode(engine, item, f"prompt.{i}"), item))
            elif isinstance(item, list):
                prompts.append((token_ids(item, f"prompt.{i}"), None))
            else:
                raise InvalidInput(f"`prompt` must be {PROMPT_SHAPES}; prompt[{i}] is not", param=f"prompt.{i}")
        return prompts

    async def prepare(self, req: CompletionRequest, engine: EngineClient) -> Prepared:
        refuse_embedding_model(engine, "/v1/completions")
        prompts = await self._prompts(req.prompt, engine)
        args = req.sampling_args(max(len(ids) for ids, _ in prompts), engine.max_model_len, self.limits)
        if req.stream:
            args["stream_interval"] = self.interval()
        if req.echo:  # a prompt given as token ids is echoed as its text
            prompts = [(ids, text if text is not None else engine.decode(ids)) for ids, text in prompts]
        return Prepared(
            model=req.model or "",
            engine=engine,
            prompts=prompts,
            params=await sampling_params(engine, args, whole=not req.stream),
            n=req.n,
            max_tokens=0 if req.score_only else args["max_tokens"],
            stream=req.stream,
            include_usage=req.include_usage,
            logprobs=req.logprobs,
            echo=req.echo,
            score_only=req.score_only,
            priority=req.priority,
            asked_max_tokens=clamped(req.asked_max_tokens(), args["max_tokens"]),
        )

    def add_logprobs(self, prep: Prepared, into: dict[int, Any], index: int, out: CompletionDelta, offset: int) -> None:
        target = into.setdefault(index, CompletionLogprobs())
        extend_completion_logprobs(target, out.token_ids, out.logprobs or [], prep.engine, prep.logprobs or 0, offset)

    def _echo(self, prep: Prepared, index: int, prompt_logprobs: Any) -> tuple[str, CompletionLogprobs | None]:
        """The echoed prompt of choice ``index`` and, when asked for, its tokens' logprobs."""
        ids, text = prep.prompts[index // prep.n]
        if prep.logprobs is None:
            return text or "", None
        lp = CompletionLogprobs()
        extend_completion_logprobs(lp, ids, prompt_logprobs or [None] * len(ids), prep.engine, prep.logprobs, 0)
        return text or "", lp

    def response(self, prep: Prepared, request_id: str, done: Finished) -> CompletionResponse:
        choices = []
        for i, generated in done.texts.items():
            text, lp = "", None
            if prep.echo:
                text, lp = self._echo(prep, i, done.prompt_logprobs.get(i // prep.n))
            if prep.logprobs is not None:
                lp = lp or CompletionLogprobs()
                if not prep.score_only:
                    tail = done.logprobs.get(i, CompletionLogprobs())
                    shift = len(text)
                    lp.tokens += tail.tokens
                    lp.token_logprobs += tail.token_logprobs
                    lp.top_logprobs += tail.top_logprobs
                    lp.text_offset += [offset + shift for offset in tail.text_offset]
            if not prep.score_only:
                text += generated
            finish = "length" if prep.score_only else done.finish.get(i)
            choices.append(CompletionChoice(index=i, text=text, logprobs=lp, finish_reason=finish))
        return CompletionResponse(
            id=self.id_prefix + request_id, created=done.created, model=prep.model, choices=choices, usage=done.usage
        )

    def opening(self, ctx: StreamContext) -> list[CompletionResponse]:
        prep = ctx.prep
        if not prep.echo or prep.logprobs is not None:  # echoed logprobs come with the engine's first output
            return []
        return [
            CompletionResponse(
                id=ctx.chunk_id,
                created=ctx.created,
                model=prep.model,
                choices=[CompletionChoice(index=i * prep.n + j, text=text or "")],
                usage=None,
            )
            for i, (_, text) in enumerate(prep.prompts)
            for j in range(prep.n)
        ]

    def frame(self, ctx: StreamContext) -> Frame | None:
        prep = ctx.prep
        if prep.echo or prep.logprobs is not None:
            return None
        return Frame.of(
            ctx.chunk_id,
            ctx.created,
            prep.model,
            middle=b',"text":',
            after_text=b',"logprobs":null,"finish_reason":',
            tail=b'}],"usage":null,"object":"text_completion"}\n\n',
        )

    def chunk(
        self, ctx: StreamContext, index: int, out: CompletionDelta, output: EngineOutput
    ) -> CompletionResponse | None:
        prep = ctx.prep
        text, lp, shift = "", None, 0
        if prep.echo and prep.logprobs is not None:
            shift = len(prep.prompts[index // prep.n][1] or "")
            if index not in ctx.echoed:
                ctx.echoed.add(index)
                text, lp = self._echo(prep, index, output.prompt_logprobs)
        if not prep.score_only:
            text += out.text
            if prep.logprobs is not None and out.logprobs:
                lp = lp or CompletionLogprobs()
                extend_completion_logprobs(
                    lp, out.token_ids, out.logprobs, prep.engine, prep.logprobs, ctx.offset(index) + shift
                )
        finish = "length" if prep.score_only and out.finish_reason is not None else out.finish_reason
        if not text and lp is None and finish is None:
            return None
        choice = CompletionChoice(index=index, text=text, logprobs=lp, finish_reason=finish)
        return CompletionResponse(id=ctx.chunk_id, created=ctx.created, model=prep.model, choices=[choice], usage=None)

    def closing(self, ctx: StreamContext, used: Usage) -> CompletionResponse:
        return CompletionResponse(id=ctx.chunk_id, created=ctx.created, model=ctx.prep.model, choices=[], usage=used)
