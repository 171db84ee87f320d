"""The generation routes' declaration, and what their two HTTP adapters share.

A generation route is declared once, with `generation_post`: its path, its codec and its body type go into the
handler's `opt` (`GENERATION`). The Litestar handler (api.py) and the hot path that skips the handler call
(fast.py) both read that declaration, build the same `Call` for the pipeline, and encode its outcome with the
same function, so a route cannot be on one path and missing from the other, and both send the same bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import post
from litestar.types import Receive, Scope

from bitinglip.core import EVENT_STREAM, error_responses
from bitinglip.gateway.pipeline import CLIENT_GONE, Call, GenerationRequest, Outcome, Pipeline
from bitinglip.gateway.serving import Codec

GENERATION = "generation"  # a route handler's `opt` key: its `GenerationRoute`
GENERATION_ERRORS = error_responses(400, 401, 403, 404, 429, 503)
JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class GenerationRoute:
    codec: str  # the name of the codec that serves it (a key of `Generation.codecs`)
    body: type[msgspec.Struct]  # the request body's type


def generation_post(
    path: str,
    *,
    codec: str,
    body: type[msgspec.Struct],
    operation_id: str,
    summary: str,
    events: type | None = None,
    **handler: Any,
) -> Callable[[Any], Any]:
    """A generation route's handler decorator: POST, its codec and body type declared in `opt` for both paths;
    ``handler`` takes the rest of Litestar's `post` arguments (a route with guards or hooks stays off the hot path)."""
    opt: dict[str, Any] = {GENERATION: GenerationRoute(codec, body)}
    if events is not None:
        opt[EVENT_STREAM] = events  # each `data:` event's type, for the OpenAPI document
    return post(
        path,
        operation_id=operation_id,
        summary=summary,
        status_code=200,
        responses=GENERATION_ERRORS,
        opt=opt,
        **handler,
    )


def engine_request_id(scope: Scope) -> str:
    request_id: str = scope["state"]["request_id"]
    # A client may reuse its own X-Request-ID; the engine needs ids unique among requests in flight.
    given = any(name == b"x-request-id" for name, _ in scope["headers"])
    return f"{request_id}-{uuid.uuid4().hex[:8]}" if given else request_id


def until_disconnect(receive: Receive) -> Callable[[], Any]:
    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return disconnected


def whole_body(outcome: Outcome) -> tuple[int, bytes]:
    """The status and JSON body of a whole (not streamed) outcome, the same on both paths."""
    if outcome is CLIENT_GONE:
        return 499, b""
    return 200, msgspec.json.encode(outcome)


@dataclass(frozen=True, slots=True)
class Generation:
    """What the generation routes need, as one dependency (Litestar resolves two or more in an anyio task group per
    request, and this is the hot path): the pipeline, and the codecs by name."""

    pipeline: Pipeline
    codecs: Mapping[str, Codec]

    async def run(self, route: GenerationRoute, data: GenerationRequest, scope: Scope, receive: Receive) -> Outcome:
        call = Call(
            self.codecs[route.codec],
            data,
            engine_request_id(scope),
            scope["state"],
            disconnected=until_disconnect(receive),
        )
        return await self.pipeline.run(call)
