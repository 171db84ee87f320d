"""The OpenAI-compatible routes: parse (Litestar decodes the typed body with msgspec), call serving, return."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from bitinglip.cluster import EngineClient
from bitinglip.core import EVENT_STREAM, NotFound, error_responses, get_logger
from bitinglip.gateway import protocol as p
from bitinglip.gateway.serving import OpenAIServing, Prepared, Serving

log = get_logger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
GENERATION_ERRORS = error_responses(400, 404, 503)


def _engine_request_id(request: Request[Any, Any, Any]) -> str:
    request_id: str = request.scope["state"]["request_id"]
    # A client may reuse its own X-Request-ID; the engine needs ids unique among requests in flight.
    return request_id if "x-request-id" not in request.headers else f"{request_id}-{uuid.uuid4().hex[:8]}"


async def _until_disconnect(request: Request[Any, Any, Any]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _respond(
    openai: NamedDependency[OpenAIServing],
    kind: Serving,
    request: Request[Any, Any, Any],
    data: p.ChatCompletionRequest | p.CompletionRequest,
    prepare: Callable[[EngineClient], Awaitable[Prepared]],
) -> Response[Any]:
    lease = await openai.acquire(data.model, data.keep_alive)  # may wait for the model to load (bounded)
    handed_over = False  # to the event stream, which releases the lease when it ends
    try:
        prep = await prepare(lease.engine)
        request_id = _engine_request_id(request)
        admission = openai.admission
        if prep.stream:
            admission.check()  # refuse with a 503 before the 200 and the stream's headers go out

            async def events() -> AsyncGenerator[bytes, None]:
                # Closed at once when the client goes away, so the engine request is aborted then, not at collection.
                try:
                    with admission.admit():
                        async with contextlib.aclosing(kind.stream(prep, request_id)) as chunks:
                            async for chunk in chunks:
                                yield chunk
                finally:
                    lease.release()

            handed_over = True
            return Stream(content=events(), media_type="text/event-stream", headers=SSE_HEADERS)
        with admission.admit():
            # A client that goes away must free its slot in the engine: race the work against the disconnect.
            work = asyncio.ensure_future(kind.complete(prep, request_id))
            watcher = asyncio.ensure_future(_until_disconnect(request))
            try:
                await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
                if not work.done():  # the client left first (or we are being cancelled): abort the engine request
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
            if work.cancelled():
                log.info("request.client_gone", engine_request_id=request_id)
                return Response(content=b"", status_code=499)
            return Response(work.result())
    finally:
        if not handed_over:
            lease.release()


class OpenAIController(Controller):
    path = "/v1"
    tags = ("openai",)

    @post(
        "/chat/completions",
        operation_id="createChatCompletion",
        summary="A chat completion; server-sent ChatCompletionChunk events with `stream: true`",
        status_code=200,
        responses=GENERATION_ERRORS,
        opt={EVENT_STREAM: p.ChatCompletionChunk},
    )
    async def chat_completions(
        self,
        openai: NamedDependency[OpenAIServing],
        request: Request[Any, Any, Any],
        data: JSONBody[p.ChatCompletionRequest],
    ) -> Response[p.ChatCompletionResponse]:
        return await _respond(openai, openai.chat, request, data, functools.partial(openai.chat.prepare, data))

    @post(
        "/completions",
        operation_id="createCompletion",
        summary="A text completion; server-sent CompletionResponse events with `stream: true`",
        status_code=200,
        responses=GENERATION_ERRORS,
        opt={EVENT_STREAM: p.CompletionResponse},
    )
    async def completions(
        self,
        openai: NamedDependency[OpenAIServing],
        request: Request[Any, Any, Any],
        data: JSONBody[p.CompletionRequest],
    ) -> Response[p.CompletionResponse]:
        return await _respond(
            openai, openai.completion, request, data, functools.partial(openai.completion.prepare, data)
        )

    @get("/models", operation_id="listModels", summary="The models deployed, and those that load on demand")
    async def list_models(self, openai: NamedDependency[OpenAIServing]) -> p.ModelList:
        return await openai.list_models()

    @get(
        "/models/{model:path}", operation_id="retrieveModel", summary="One served model", responses=error_responses(404)
    )
    async def retrieve_model(self, openai: NamedDependency[OpenAIServing], model: FromPath[str]) -> p.ModelCard:
        name = model.lstrip("/")
        for card in (await openai.list_models()).data:
            if card.id == name:
                return card
        raise NotFound(
            f"the model `{name}` does not exist or is not served here", param="model", code="model_not_found"
        )
