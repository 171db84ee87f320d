"""Every use BitingLip makes of Litestar's internals, in one module, each with a test against the pinned Litestar
(tests/unit/core/test_litestar_internals.py), so an upgrade breaks one test, not production.

- **The scope's route handler.** Litestar's router puts the matched handler in ``scope["route_handler"]``
  before route middleware runs; the generation hot path (gateway/fast.py) reads its `opt`, its body limit,
  and whether it carries handler-level behaviour the hot path would skip (`skipped_by_bypass`).
- **The streaming response subclass.** `EventStream` extends Litestar's `Stream` and its ASGI response, so
  its events go straight to the server's own `send` (kept by `RequestIdMiddleware`), past every middleware's
  wrapper, while its start goes through them.
- **The raw send.** `wrap_whole_app` puts ASGI middleware around the app's whole ASGI handler (Litestar runs
  its middleware on matched routes only), the way Litestar's OpenTelemetry plugin does; `RequestIdMiddleware`
  there keeps the server's own `send` in the scope's state for `EventStream`.
- **An error answered outside a handler** (`send_error`): Litestar's `Request` and the response our exception
  handler makes, sent as a handler's error would be.

`check()` runs when the app is built and fails start-up if the installed Litestar is not the pinned one or lacks
what this module uses.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse

from bitinglip.core.errors import SettingsError
from bitinglip.core.events import SERVER_SEND, SSE_HEADERS, Events, send_events
from bitinglip.core.http import handle_error

if TYPE_CHECKING:
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.datastructures import Cookie
    from litestar.response.base import ASGIResponse
    from litestar.types import ASGIApp, Receive, Scope, Send, TypeEncodersMap

LITESTAR_VERSION = "2.25.0"  # the release this module was written and tested for; pyproject pins the same


def check() -> None:
    """Fail start-up, naming what is wrong, if the installed Litestar is not the one this module was written for."""
    installed = importlib.metadata.version("litestar")
    if installed != LITESTAR_VERSION:
        raise SettingsError(
            f"BitingLip needs litestar=={LITESTAR_VERSION} (it reaches into its internals), found {installed}: "
            f"pip install 'litestar=={LITESTAR_VERSION}'"
        )
    needed = {
        HTTPRouteHandler: ("opt", "resolve_request_max_body_size", "resolve_guards", "resolve_before_request"),
        Litestar: ("asgi_handler",),
        ASGIStreamingResponse: ("send_body", "iterator"),
    }
    for owner, names in needed.items():
        for name in names:
            if not hasattr(owner, name) and name not in getattr(owner, "__slots__", ()):
                raise SettingsError(f"litestar {installed}: {owner.__name__}.{name} is gone")


# -- the raw send


def wrap_whole_app(app: Litestar, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
    """Put ``wrap`` around every request the app takes, matched or not (once: a second call changes nothing)."""
    if not getattr(app.asgi_handler, "_bitinglip_wrapped", False):
        wrapped = wrap(app.asgi_handler)
        setattr(wrapped, "_bitinglip_wrapped", True)  # noqa: B010 (an instance attribute the wrapper does not declare)
        app.asgi_handler = wrapped


# -- the scope's route handler


def route_handler_of(scope: Scope) -> HTTPRouteHandler | None:
    """The handler Litestar matched for this request (set before route middleware runs)."""
    handler = scope.get("route_handler")
    return handler if isinstance(handler, HTTPRouteHandler) else None


def handler_body_limit(handler: HTTPRouteHandler) -> int | None:
    """The handler's request body limit in bytes (its own, or the nearest layer's); None: no limit."""
    return handler.resolve_request_max_body_size()


def skipped_by_bypass(handler: HTTPRouteHandler) -> list[str]:
    """What a handler (or a layer above it) declares that a path skipping the handler call would not run."""
    skipped = []
    if handler.resolve_guards():
        skipped.append("guards")
    if handler.resolve_before_request() is not None:
        skipped.append("before_request")
    if handler.resolve_after_response() is not None:
        skipped.append("after_response")
    if any(layer.after_request for layer in handler.ownership_layers):
        skipped.append("after_request")
    if handler.resolve_response_headers():
        skipped.append("response_headers")
    if handler.resolve_response_cookies():
        skipped.append("response_cookies")
    if handler.background is not None:
        skipped.append("background")
    return skipped


# -- an error answered outside a handler


async def send_error(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer ``exc`` as the app's exception handler would have, had a handler raised it."""
    request: Request[Any, Any, Any] = Request(scope, receive)
    response = handle_error(request, exc)
    await response.to_asgi_response(None, request)(scope, receive, send)


# -- the streaming response subclass


class EventStream(Stream):
    """Server-sent events from an async generator of encoded events; ``on_close`` runs once when it ends.

    A `FinalEvent` ends the body (the generator is closed after it); without one the body ends with the generator.
    """

    __slots__ = ("on_close",)

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None] | None = None) -> None:
        super().__init__(content=events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.on_close = on_close

    @classmethod
    def of(cls, events: Events) -> EventStream:
        return cls(events.iterator, on_close=events.on_close)

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        return _ASGIEventStream(
            server_send=request.scope["state"].get(SERVER_SEND),
            on_close=self.on_close,
            content_length=0,
            cookies=self.cookies,
            encoded_headers=encoded_headers,
            headers={**(headers or {}), **self.headers},
            iterator=self.iterator,
            media_type=self.media_type,
            status_code=self.status_code or status_code,
        )


class _ASGIEventStream(ASGIStreamingResponse):
    __slots__ = ("on_close", "server_send")

    def __init__(self, server_send: Send | None, on_close: Callable[[], None] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_send = server_send
        self.on_close = on_close

    async def send_body(self, send: Send, receive: Receive) -> None:
        await send_events(self.iterator, self.server_send or send, receive, self.on_close)  # type: ignore[arg-type]
