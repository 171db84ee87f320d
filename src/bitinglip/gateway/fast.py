"""The generation routes' hot path: requests served past Litestar's per-request handler machinery.

Litestar still routes the request and runs the middleware before this (the key check, the rate-limit headers),
and its handlers stay the routes' definition: their OpenAPI entries, and every request this does not take. What
is skipped is the work a handler call costs on each request (a `Request` and its parsed headers, the signature
model, dependency resolution, the response object and its headers); docs/performance.md has the figures.

Which requests it takes is the route's own declaration (`generation_post`, generation.py), never a list of
paths: every generation route, and nothing else. A route that declares handler-level behaviour this would skip
(guards, request or response hooks, response headers or cookies) is left to its handler, with a warning once.
A body this cannot decode exactly as the handler would (strict about nothing it is lax about) goes to the
handler with the bytes already read, so a bad request gets the handler's answer, word for word. An error raised
here is answered here, through the same `send` and exception handler a handler's would take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from bitinglip.core import Events, get_logger, handler_body_limit, route_handler_of, send_error, skipped_by_bypass
from bitinglip.gateway.forward import Forwarder
from bitinglip.gateway.generation import GENERATION, JSON_HEADERS, Generation, GenerationRoute, whole_body

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Taken:
    """What the hot path needs of one generation route, worked out on its first request."""

    route: GenerationRoute
    decoder: msgspec.json.Decoder[Any]
    limit: int | None  # the handler's request body limit


class FastGeneration:
    """Route middleware: takes the POSTs of every route declared with `generation_post`; the rest goes on."""

    def __init__(self, app: ASGIApp, generation: Generation, forwarder: Forwarder | None = None) -> None:
        self.app = app
        self.generation = generation
        self.forwarder = forwarder
        self.routes: dict[int, _Taken | None] = {}  # by the handler's id: None for a route it leaves alone

    def _taken(self, scope: Scope) -> _Taken | None:
        handler = route_handler_of(scope)
        if handler is None:
            return None
        key = id(handler)
        if key not in self.routes:
            route = handler.opt.get(GENERATION)
            taken = None
            if isinstance(route, GenerationRoute):
                if skipped := skipped_by_bypass(handler):
                    log.warning("gateway.fast_path_off", path=scope.get("path_template"), declares=skipped)
                else:
                    # Lax as Litestar's handlers are (`strict=False`: "5" taken for 5): nothing it takes is refused.
                    decoder = msgspec.json.Decoder(route.body, strict=False)
                    taken = _Taken(route, decoder, handler_body_limit(handler))
            self.routes[key] = taken
        return self.routes[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        taken = self._taken(scope) if scope.get("method") == "POST" else None
        if taken is None:
            await self.app(scope, receive, send)
            return
        read: list[ReceiveMessage] = []
        data = await _read(receive, taken, read)
        if data is None:  # the handler reads (what is left of) the body and answers, as it would have anyway
            await self.app(scope, _replay(read, receive), send)
            return
        started = False

        def sending(message: Message) -> Any:
            nonlocal started
            started = True
            return send(message)

        try:
            if self.forwarder is not None and (url := self._elsewhere(data, scope)) is not None:
                await self.forwarder.send(url, scope, _body(read), receive, sending)
                return
            outcome = await self.generation.run(taken.route, data, scope, receive)
            if isinstance(outcome, Events):
                await outcome.send(scope, receive, sending)
            else:
                status, body = whole_body(outcome)
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())],
                }
                await sending(start)
                end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
                await send(end)
        except Exception as exc:
            if started:
                raise
            await send_error(scope, receive, send, exc)

    def _elsewhere(self, data: Any, scope: Scope) -> str | None:
        """Another instance's URL when it serves the model and this one does not."""
        assert self.forwarder is not None
        # What an alias stands for: the instances list deployments, not the aliases that name them.
        model = self.generation.pipeline.aliases.resolve(getattr(data, "model", None))
        return self.forwarder.target(model, scope)


async def _read(receive: Receive, taken: _Taken, read: list[ReceiveMessage]) -> Any:
    """The decoded body, or None (too large, cut short, not what the handler would take); `read` keeps the
    messages taken from `receive`, for the handler."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if taken.limit is not None and size > taken.limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    try:
        return taken.decoder.decode(parts[0] if len(parts) == 1 else b"".join(parts))
    except msgspec.MsgspecError:
        return None


def _body(read: list[ReceiveMessage]) -> bytes:
    """The request's body as read, to send on."""
    return b"".join(part for m in read if isinstance(part := m.get("body"), bytes))


def _replay(read: list[ReceiveMessage], receive: Receive) -> Receive:
    """`receive` that answers with the messages already read first."""
    pending = list(read)

    async def replayed() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
