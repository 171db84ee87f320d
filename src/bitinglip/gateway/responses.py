"""OpenAI's Responses API: `POST /v1/responses` (a generation route, on the hot path like chat), and the stored
responses by id: retrieve, delete, their input items, cancel.

The stored responses are the key's own (an admin key, or any caller while auth is off, reaches them all): another
key's answer 404 as if they did not exist.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.params import FromPath, FromQuery, JSONBody

from bitinglip.core import InvalidInput, error_responses
from bitinglip.gateway.api import respond
from bitinglip.gateway.generation import Generation, generation_post
from bitinglip.gateway.protocol.responses import (
    InputItemList,
    ResponseDeleted,
    ResponseObject,
    ResponsesRequest,
    StreamEvent,
)
from bitinglip.gateway.response_store import ResponseStore, Viewer

STORED_ERRORS = error_responses(400, 401, 403, 404)


def viewer_of(request: Request[Any, Any, Any]) -> Viewer:
    key = request.scope.get("state", {}).get("key")
    if key is None:
        return Viewer(owner="", everything=True)
    return Viewer(owner=key.id, everything=key.scope == "admin")


class _Background(msgspec.Struct):
    background: bool = False


def _json(body: bytes) -> Response[Any]:
    return Response(content=body, media_type=MediaType.JSON)


class ResponsesController(Controller):
    path = "/v1/responses"
    tags = ("openai",)

    @generation_post(
        "/",
        codec="responses",
        body=ResponsesRequest,
        events=StreamEvent,
        operation_id="createResponse",
        summary="A model response (OpenAI's Responses API); its events (`event:` lines) with `stream: true`",
    )
    async def create(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[ResponsesRequest],
    ) -> Response[ResponseObject]:
        return await respond(generation, request, data)

    @get(
        "/{response_id:str}",
        operation_id="getResponse",
        summary="A stored response, as it was answered",
        responses=STORED_ERRORS,
    )
    async def retrieve(
        self,
        response_store: NamedDependency[ResponseStore],
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
    ) -> Response[ResponseObject]:
        return _json(await response_store.get(response_id, viewer_of(request)))

    @delete(
        "/{response_id:str}",
        operation_id="deleteResponse",
        summary="Delete a stored response",
        status_code=200,
        responses=STORED_ERRORS,
    )
    async def delete(
        self,
        response_store: NamedDependency[ResponseStore],
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
    ) -> ResponseDeleted:
        await response_store.delete(response_id, viewer_of(request))
        return ResponseDeleted(id=response_id)

    @get(
        "/{response_id:str}/input_items",
        operation_id="listInputItems",
        summary="The input items of a stored response's request, a page at a time",
        responses=STORED_ERRORS,
    )
    async def input_items(
        self,
        response_store: NamedDependency[ResponseStore],
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 20,
        order: FromQuery[Literal["asc", "desc"]] = "desc",
        include: FromQuery[list[str] | None] = None,
    ) -> InputItemList:
        return await response_store.input_items(response_id, viewer_of(request), after=after, limit=limit, order=order)

    @post(
        "/{response_id:str}/cancel",
        operation_id="cancelResponse",
        summary="Cancel a background response; every response here has finished when it is answered",
        status_code=200,
        responses=STORED_ERRORS,
    )
    async def cancel(
        self,
        response_store: NamedDependency[ResponseStore],
        request: Request[Any, Any, Any],
        response_id: FromPath[str],
    ) -> Response[ResponseObject]:
        body = await response_store.get(response_id, viewer_of(request))
        if not msgspec.json.decode(body, type=_Background).background:
            raise InvalidInput(
                "Only responses created with background set to true can be cancelled.", param="response_id"
            )
        # `background` runs in the foreground here: it is finished by the time anyone has its id, and cancelling a
        # finished background response leaves it as it is (OpenAI's answer for one that already ended).
        return _json(body)
