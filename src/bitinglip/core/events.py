"""`EventStream`: a text/event-stream response with nothing between its events and the socket.

Litestar's `Stream` runs every response in an anyio task group (one task to send, one to listen for the
client leaving) and sends each event through every middleware's `send` wrapper. Those wrappers only look at
the response's start (its status and headers), so this response sends the start through them and each
event straight to the server's own `send`, which `RequestIdMiddleware` keeps in ``scope["state"]``.
A client that leaves is noticed by one plain task waiting on `receive`; it cancels the stream, whose
generator is closed there (that aborts the engine request), and the response ends quietly.

A route's work returns `Events` (the generator and what to run when it ends); the gateway's hot path sends them
itself (`Events.send`), a Litestar handler returns them as an `EventStream`: the same bytes either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import HTTPResponseBodyEvent

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.datastructures import Cookie
    from litestar.response.base import ASGIResponse
    from litestar.types import Receive, Scope, Send, TypeEncodersMap

SERVER_SEND = "server_send"  # the key in scope["state"] under which the server's own `send` is kept
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# What Litestar sends as the start of an `EventStream` response, encoded once.
SSE_START_HEADERS = [
    *((name.lower().encode(), value.encode()) for name, value in SSE_HEADERS.items()),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
_END: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}


class FinalEvent(bytes):
    """A stream's last event (or events): sent with the end of the body, one write instead of two."""

    __slots__ = ()


class Events:
    """Encoded events to send as a response, and what to run once when they end: what a route's work returns,
    sent straight to ASGI by `send`, or as a Litestar response by `EventStream.of`."""

    __slots__ = ("iterator", "on_close")

    def __init__(self, iterator: AsyncGenerator[bytes, None], on_close: Callable[[], None] | None = None) -> None:
        self.iterator = iterator
        self.on_close = on_close

    async def send(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The whole response: the start `EventStream` sends (status 200, `SSE_START_HEADERS`), then the events."""
        await send({"type": "http.response.start", "status": 200, "headers": SSE_START_HEADERS})
        await send_events(self.iterator, scope["state"].get(SERVER_SEND) or send, receive, self.on_close)


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


async def send_events(
    events: AsyncGenerator[bytes, None], out: Send, receive: Receive, on_close: Callable[[], None] | None
) -> None:
    """Send each event as a body part (the response's start has gone), then end the body; `on_close` last."""
    this = asyncio.current_task()
    streaming = True

    async def watch() -> None:
        # After the last event the server answers `receive` with a disconnect too: only one while streaming counts.
        while (await receive())["type"] != "http.disconnect":
            pass
        if streaming and this is not None:
            this.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        async for event in events:
            if type(event) is FinalEvent:
                streaming = False
                await out({"type": "http.response.body", "body": event, "more_body": False})
                break
            await out({"type": "http.response.body", "body": event, "more_body": True})
        else:
            streaming = False
            await out(_END)
    except asyncio.CancelledError:
        if streaming and watcher.done() and this is not None and this.uncancel() == 0:
            return  # the client left: the generator was closed where it stood; nothing more to send
        raise
    finally:
        streaming = False
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await events.aclose()
        if on_close is not None:
            on_close()
