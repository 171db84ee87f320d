"""The OpenAI-compatible routes: parse (Litestar decodes the typed body with msgspec), call serving, return."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.types import Receive, Scope

from bitinglip.cluster import EngineClient
from bitinglip.core import EVENT_STREAM, BitingLipError, Events, EventStream, NotFound, error_responses, get_logger
from bitinglip.gateway.accounting import Accounting
from bitinglip.gateway.protocol.chat import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from bitinglip.gateway.protocol.completion import CompletionRequest, CompletionResponse
from bitinglip.gateway.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from bitinglip.gateway.protocol.models import ModelCard, ModelList
from bitinglip.gateway.serving import EmbeddingServing, OpenAIServing, Prepared, Serving, Tally

log = get_logger(__name__)
GENERATION_ERRORS = error_responses(400, 401, 403, 404, 429, 503)


@dataclasses.dataclass(frozen=True, slots=True)
class Generation:
    """What the generation routes need, as one dependency: Litestar resolves two or more in an anyio task group
    per request, and this is the hot path."""

    openai: OpenAIServing
    accounting: Accounting


def _engine_request_id(scope: Scope) -> str:
    request_id: str = scope["state"]["request_id"]
    # A client may reuse its own X-Request-ID; the engine needs ids unique among requests in flight.
    given = any(name == b"x-request-id" for name, _ in scope["headers"])
    return f"{request_id}-{uuid.uuid4().hex[:8]}" if given else request_id


def _visible(models: ModelList, request: Request[Any, Any, Any]) -> ModelList:
    """Only the models the request's key may use (all of them for a key without a list, or with auth off)."""
    allowed = request.scope["state"].get("models")
    if allowed is not None:
        models.data = [card for card in models.data if card.id in allowed]
    return models


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


CLIENT_GONE = None  # what `generate` returns when the client left before a whole response was ready


async def generate(
    generation: Generation,
    kind: Serving | EmbeddingServing,
    scope: Scope,
    receive: Receive,
    data: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
    prepare: Callable[[EngineClient], Awaitable[Prepared]],
) -> Events | msgspec.Struct | None:
    """One generation request, parsed: an event stream, a whole response, or `CLIENT_GONE`. Errors are raised."""
    openai, accounting = generation.openai, generation.accounting
    # The key's model list and a cheap look at its limits come first: a refusal costs no engine work at all.
    exchange = accounting.begin(scope["state"], data.model)
    try:
        # Bounded: may wait for the model to load; a deployment at its bounds refuses here, before tokenizing.
        lease = await openai.acquire(data.model, data.keep_alive)
    except BitingLipError as exc:
        exchange.fail(exc)
    handed_over = False  # to the event stream, which releases the lease and closes the books when it ends
    tally = Tally(on_first=lease.started)
    try:
        prep = await prepare(lease.engine)
        exchange.admit(prep)  # reserves prompt + max_tokens against the limits: 429 if it does not fit
        lease.queue_prompt(exchange.prompt_tokens)
        request_id = _engine_request_id(scope)
        if prep.stream:
            assert isinstance(kind, Serving)

            def closed() -> None:
                lease.release()
                exchange.finish(tally, 200)

            # Closed at once when the client goes away, so the engine request is aborted then, not at collection.
            handed_over = True
            return Events(kind.stream(prep, request_id, tally), on_close=closed)
        # A client that goes away must free its slot in the engine: race the work against the disconnect.
        work = asyncio.ensure_future(kind.complete(prep, request_id, tally))
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not work.done():  # the client left first (or we are being cancelled): abort the engine request
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.cancelled():
            log.info("request.client_gone", engine_request_id=request_id)
            exchange.finish(tally, 499)
            return CLIENT_GONE
        body = work.result()
        exchange.finish(tally, 200)
        return body
    except BitingLipError as exc:
        exchange.fail(exc, tally)
    except BaseException:
        exchange.finish(tally, 500)
        raise
    finally:
        if not handed_over:
            lease.release()


async def _respond(
    generation: Generation,
    kind: Serving | EmbeddingServing,
    request: Request[Any, Any, Any],
    data: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
    prepare: Callable[[EngineClient], Awaitable[Prepared]],
) -> Response[Any]:
    result = await generate(generation, kind, request.scope, request.receive, data, prepare)
    if result is CLIENT_GONE:
        return Response(content=b"", status_code=499)
    return EventStream.of(result) if isinstance(result, Events) else Response(result)


class OpenAIController(Controller):
    path = "/v1"
    tags = ("openai",)

    @post(
        "/chat/completions",
        operation_id="createChatCompletion",
        summary="A chat completion; server-sent ChatCompletionChunk events with `stream: true`",
        status_code=200,
        responses=GENERATION_ERRORS,
        opt={EVENT_STREAM: ChatCompletionChunk},
    )
    async def chat_completions(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[ChatCompletionRequest],
    ) -> Response[ChatCompletionResponse]:
        prepare = functools.partial(generation.openai.chat.prepare, data)
        return await _respond(generation, generation.openai.chat, request, data, prepare)

    @post(
        "/completions",
        operation_id="createCompletion",
        summary="A text completion; server-sent CompletionResponse events with `stream: true`",
        status_code=200,
        responses=GENERATION_ERRORS,
        opt={EVENT_STREAM: CompletionResponse},
    )
    async def completions(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[CompletionRequest],
    ) -> Response[CompletionResponse]:
        prepare = functools.partial(generation.openai.completion.prepare, data)
        return await _respond(generation, generation.openai.completion, request, data, prepare)

    @post(
        "/embeddings",
        operation_id="createEmbedding",
        summary="Embeddings of one or more inputs, from an embedding model",
        status_code=200,
        responses=GENERATION_ERRORS,
    )
    async def embeddings(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[EmbeddingRequest],
    ) -> Response[EmbeddingResponse]:
        prepare = functools.partial(generation.openai.embeddings.prepare, data)
        return await _respond(generation, generation.openai.embeddings, request, data, prepare)

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
