"""Anthropic's Messages API routes: `POST /v1/messages` (what Claude Code and the `anthropic` SDK call) and
`POST /v1/messages/count_tokens`.

Creating a message is a generation route like chat's (`generation_post`: the pipeline, the hot path, keys,
limits, usage and metrics), served by the `messages` codec (serving/messages.py). Counting tokens takes an engine
lease for its tokenizer as /tokenize does. Errors on these paths are answered in Anthropic's envelope by the one
exception handler (core/http.py); the `anthropic-version` and `anthropic-beta` headers are read by nobody.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from bitinglip.core import error_responses
from bitinglip.gateway.api import respond
from bitinglip.gateway.generation import Generation, generation_post
from bitinglip.gateway.pipeline import Pipeline
from bitinglip.gateway.protocol.messages import (
    CountTokensRequest,
    CountTokensResponse,
    MessageResponse,
    MessagesRequest,
)
from bitinglip.gateway.serving import OpenAIServing


class AnthropicController(Controller):
    path = "/v1"
    tags = ("anthropic",)

    @generation_post(
        "/messages",
        codec="messages",
        body=MessagesRequest,
        operation_id="createMessage",
        summary="A message, as Anthropic's Messages API makes it; server-sent events (message_start, "
        "content_block_start/delta/stop, message_delta, message_stop) with `stream: true`",
    )
    async def create_message(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[MessagesRequest],
    ) -> Response[MessageResponse]:
        return await respond(generation, request, data)

    @post(
        "/messages/count_tokens",
        operation_id="countMessageTokens",
        summary="The input tokens a message request with this body would be billed",
        status_code=200,
        responses=error_responses(400, 401, 403, 404, 503),
    )
    async def count_tokens(
        self,
        pipeline: NamedDependency[Pipeline],
        openai: NamedDependency[OpenAIServing],
        request: Request[Any, Any, Any],
        data: JSONBody[CountTokensRequest],
    ) -> CountTokensResponse:
        lease = await pipeline.lease(request.scope["state"], data.model)
        try:
            return CountTokensResponse(input_tokens=await openai.messages.count_tokens(data, lease.engine))
        finally:
            lease.release()
