"""The OpenAI-compatible routes: parse (Litestar decodes the typed body with msgspec), run the pipeline, return.

The generation routes are declared with `generation_post` (generation.py), which is also how the hot path
(fast.py) finds them."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.params import FromPath, JSONBody

from bitinglip.core import Events, EventStream, NotFound, error_responses
from bitinglip.gateway.generation import GENERATION, Generation, GenerationRoute, generation_post, whole_body
from bitinglip.gateway.keys import ApiKey
from bitinglip.gateway.pipeline import GenerationRequest
from bitinglip.gateway.protocol.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from bitinglip.gateway.protocol.completion import CompletionRequest, CompletionResponse
from bitinglip.gateway.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from bitinglip.gateway.protocol.models import ModelCard, ModelList
from bitinglip.gateway.serving import OpenAIServing


def _visible(models: ModelList, request: Request[Any, Any, Any]) -> ModelList:
    """Only the models the request's key may use (all of them for a key without a list, or with auth off); where
    they live on disk (`root`) only for an admin key, or with auth off."""
    state = request.scope["state"]
    allowed = state.get("models")
    if allowed is not None:
        models.data = [card for card in models.data if card.id in allowed]
    key: ApiKey | None = state.get("key")
    if key is not None and key.scope != "admin":
        for card in models.data:
            card.root = None
    return models


async def respond(generation: Generation, request: Request[Any, Any, Any], data: GenerationRequest) -> Response[Any]:
    """A generation route's handler: the route's own declaration says which codec serves it."""
    route: GenerationRoute = request.route_handler.opt[GENERATION]
    outcome = await generation.run(route, data, request.scope, request.receive)
    if isinstance(outcome, Events):
        return EventStream.of(outcome)
    status, body = whole_body(outcome)
    return Response(content=body, status_code=status, media_type=MediaType.JSON)


class OpenAIController(Controller):
    path = "/v1"
    tags = ("openai",)

    @generation_post(
        "/chat/completions",
        codec="chat",
        body=ChatCompletionRequest,
        events=ChatCompletionChunk,
        operation_id="createChatCompletion",
        summary="A chat completion; server-sent ChatCompletionChunk events with `stream: true`",
    )
    async def chat_completions(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[ChatCompletionRequest],
    ) -> Response[ChatCompletionResponse]:
        return await respond(generation, request, data)

    @generation_post(
        "/completions",
        codec="completion",
        body=CompletionRequest,
        events=CompletionResponse,
        operation_id="createCompletion",
        summary="A text completion; server-sent CompletionResponse events with `stream: true`",
    )
    async def completions(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[CompletionRequest],
    ) -> Response[CompletionResponse]:
        return await respond(generation, request, data)

    @generation_post(
        "/embeddings",
        codec="embeddings",
        body=EmbeddingRequest,
        operation_id="createEmbedding",
        summary="Embeddings of one or more inputs, from an embedding model",
    )
    async def embeddings(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[EmbeddingRequest],
    ) -> Response[EmbeddingResponse]:
        return await respond(generation, request, data)

    @get("/models", operation_id="listModels", summary="The models deployed, and those that load on demand")
    async def list_models(self, openai: NamedDependency[OpenAIServing], request: Request[Any, Any, Any]) -> ModelList:
        return _visible(await openai.list_models(), request)

    @get(
        "/models/{model:path}", operation_id="retrieveModel", summary="One served model", responses=error_responses(404)
    )
    async def retrieve_model(
        self, openai: NamedDependency[OpenAIServing], request: Request[Any, Any, Any], model: FromPath[str]
    ) -> ModelCard:
        name = model.lstrip("/")
        for card in _visible(await openai.list_models(), request).data:
            if card.id == name:
                return card
        raise NotFound(
            f"the model `{name}` does not exist or is not served here", param="model", code="model_not_found"
        )
