"""The generation routes' hot path: chat and text completions served past Litestar's per-request handler machinery.

Litestar still routes the request and runs the middleware before this (the key check, the rate-limit headers),
and its handlers stay the routes' definition: their OpenAPI entries, and every request this does not take. What
is skipped is the work a handler call costs on each request (a `Request` and its parsed headers, the signature
model, dependency resolution, the response object and its headers): about 15% of the API process's CPU per
request, measured with short answers at 64 at once.

A body this cannot decode exactly as the handler would (strict about nothing it is lax about) goes to the
handler with the bytes already read, so a bad request gets the handler's answer, word for word. An error raised
here is answered here, through the same `send` a handler's would take, in the same envelope.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec
from litestar import Request
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

from bitinglip.core import Events, handle_error
from bitinglip.gateway.api import CLIENT_GONE, Generation, generate
from bitinglip.gateway.protocol.chat import ChatCompletionRequest
from bitinglip.gateway.protocol.completion import CompletionRequest

_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastGeneration:
    """Route middleware: takes POST /v1/chat/completions and /v1/completions; every other request goes on."""

    def __init__(self, app: ASGIApp, generation: Generation) -> None:
        self.app = app
        self.generation = generation
        # Lax as Litestar's handlers are (`strict=False`: "5" is taken for 5), so nothing it takes is refused here.
        self.routes: dict[str, tuple[msgspec.json.Decoder[Any], Any]] = {
            "/v1/chat/completions": (
                msgspec.json.Decoder(ChatCompletionRequest, strict=False),
                generation.openai.chat,
            ),
            "/v1/completions": (msgspec.json.Decoder(CompletionRequest, strict=False), generation.openai.completion),
        }
        self.limits: dict[str, int | None] = {}  # the request body limit of each route's handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("path_template", "")) if scope.get("method") == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        read: list[ReceiveMessage] = []
        data = await self._read(scope, receive, route[0], read)
        if data is None:  # the handler reads (what is left of) the body and answers, as it would have anyway
            await self.app(scope, _replay(read, receive), send)
            return
        started = False

        def sending(message: Message) -> Any:
            nonlocal started
            started = True
            return send(message)

        kind = route[1]
        try:
            result = await generate(self.generation, kind, scope, receive, data, functools.partial(kind.prepare, data))
            if isinstance(result, Events):
                await result.send(scope, receive, sending)
            else:
                body = b"" if result is CLIENT_GONE else msgspec.json.encode(result)
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": 499 if result is CLIENT_GONE else 200,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())],
                }
                await sending(start)
                end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
                await send(end)
        except Exception as exc:
            if started:
                raise
            request: Request[Any, Any, Any] = Request(scope, receive)
            response = handle_error(request, exc)
            await response.to_asgi_response(None, request)(scope, receive, send)

    async def _read(
        self, scope: Scope, receive: Receive, decoder: msgspec.json.Decoder[Any], read: list[ReceiveMessage]
    ) -> Any:
        """The decoded body, or None (too large, cut short, not what the handler would take); `read` keeps the
        messages taken from `receive`, for the handler."""
        path = scope["path_template"]
        if path not in self.limits:
            handler = scope.get("route_handler")
            self.limits[path] = getattr(handler, "resolve_request_max_body_size", lambda: None)()
        limit = self.limits[path]
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit is not None and size > limit:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            return decoder.decode(parts[0] if len(parts) == 1 else b"".join(parts))
        except msgspec.MsgspecError:
            return None


def _replay(read: list[ReceiveMessage], receive: Receive) -> Receive:
    """`receive` that answers with the messages already read first."""
    pending = list(read)

    async def replayed() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
