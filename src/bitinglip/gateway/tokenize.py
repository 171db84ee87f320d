"""`POST /tokenize` and `POST /detokenize`, named and shaped as `vllm serve` has them, so a client can count
tokens before it sends: a prompt is tokenized exactly as /v1/completions tokenizes it, messages exactly as
/v1/chat/completions renders and tokenizes them, so `count` is the `prompt_tokens` the request will be billed."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from bitinglip.core import InvalidInput, error_responses
from bitinglip.gateway.pipeline import Pipeline
from bitinglip.gateway.protocol.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from bitinglip.gateway.serving import ChatServing
from bitinglip.gateway.serving.base import Serving
from bitinglip.gateway.serving.tools import tools_json


class TokenizeController(Controller):
    path = "/"
    tags = ("tokens",)

    @post(
        "/tokenize",
        operation_id="tokenize",
        summary="Token ids of a prompt or of chat messages, as a request would get them",
        status_code=200,
        responses=error_responses(400, 401, 403, 404, 503),
    )
    async def tokenize(
        self, pipeline: NamedDependency[Pipeline], request: Request[Any, Any, Any], data: JSONBody[TokenizeRequest]
    ) -> TokenizeResponse:
        if (data.prompt is None) == (data.messages is None):
            raise InvalidInput("send exactly one of `prompt` and `messages`", param="prompt")
        if data.tools and data.messages is None:
            raise InvalidInput("`tools` go with `messages`", param="tools")
        lease = await pipeline.lease(request.scope["state"], data.model)
        try:
            engine = lease.engine
            if data.messages is not None:
                tools = tools_json(data.tools) if data.tools else None
                ids, _ = await ChatServing.render(data.messages, engine, tools)
            else:
                ids = await Serving.encode(engine, data.prompt or "", "prompt")
            strs = [engine.decode_token(t) for t in ids] if data.return_token_strs else None
            return TokenizeResponse(count=len(ids), max_model_len=engine.max_model_len, tokens=ids, token_strs=strs)
        finally:
            lease.release()

    @post(
        "/detokenize",
        operation_id="detokenize",
        summary="The text of token ids",
        status_code=200,
        responses=error_responses(400, 401, 403, 404, 503),
    )
    async def detokenize(
        self,
        pipeline: NamedDependency[Pipeline],
        request: Request[Any, Any, Any],
        data: JSONBody[DetokenizeRequest],
    ) -> DetokenizeResponse:
        lease = await pipeline.lease(request.scope["state"], data.model)
        try:
            return DetokenizeResponse(prompt=lease.engine.decode(data.tokens))
        finally:
            lease.release()
