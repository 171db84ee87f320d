"""The OpenAI-compatible routes: parse, call the serving layer, return. Nothing else lives here."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from bitinglip.core.errors import NotFound
from bitinglip.gateway.serving import OpenAIServing, Prepared

JSON = "application/json"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(value: Any, status: int = 200) -> Response[bytes]:
    return Response(content=msgspec.json.encode(value), status_code=status, media_type=JSON)


def _engine_request_id(request: Request) -> str:
    request_id = request.scope["state"]["request_id"]
    # A client may reuse its own X-Request-ID; the engine needs ids unique among requests in flight.
    return request_id if "x-request-id" not in request.headers else f"{request_id}-{uuid.uuid4().hex[:8]}"


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _respond(serving: OpenAIServing, request: Request, prep: Prepared) -> Response[Any]:
    request_id = _engine_request_id(request)
    if prep.stream:
        serving.check_admission()  # refuse with a 503 before the 200 and the stream's headers go out

        async def events() -> Any:
            with serving.admit():
                async for chunk in serving.stream(prep, request_id):
                    yield chunk

        return Stream(content=events(), media_type="text/event-stream", headers=SSE_HEADERS)
    with serving.admit():
        # A client that goes away must free its slot in the engine: race the work against the disconnect.
        work = asyncio.ensure_future(serving.complete(prep, request_id))
        watcher = asyncio.ensure_future(_until_disconnect(request))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()
        if work.cancelled():
            return Response(content=b"", status_code=499)
        return _json(work.result())


def openai_routes(serving: OpenAIServing) -> list[Any]:
    @post("/v1/chat/completions", operation_id="createChatCompletion", status_code=200)
    async def chat_completions(request: Request) -> Response[Any]:
        prep = await serving.prepare_chat(await request.body())
        return await _respond(serving, request, prep)

    @post("/v1/completions", operation_id="createCompletion", status_code=200)
    async def completions(request: Request) -> Response[Any]:
        prep = await serving.prepare_completion(await request.body())
        return await _respond(serving, request, prep)

    @get("/v1/models", operation_id="listModels")
    async def list_models() -> Response[bytes]:
        return _json(serving.list_models())

    @get("/v1/models/{model:path}", operation_id="retrieveModel")
    async def retrieve_model(model: FromPath[str]) -> Response[bytes]:
        name = model.lstrip("/")
        for card in serving.list_models().data:
            if card.id == name:
                return _json(card)
        raise NotFound(
            f"the model `{name}` does not exist or is not served here", param="model", code="model_not_found"
        )

    @get("/health", operation_id="health")
    async def health() -> Response[bytes]:
        return _json({"status": "ok"})

    @get("/ready", operation_id="ready")
    async def ready() -> Response[bytes]:
        status = serving.cluster.status()
        body = {
            "ready": serving.cluster.ready,
            "engines": [{"model": s.model, "state": s.state, "error": s.error} for s in status],
        }
        if serving.cluster.ready:
            return _json(body)
        response = _json(body, status=503)
        response.headers["Retry-After"] = "5"
        return response

    return [chat_completions, completions, list_models, retrieve_model, health, ready]
