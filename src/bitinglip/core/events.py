"""Event streams: text/event-stream responses with nothing between their events and the socket.

Litestar's `Stream` runs every response in an anyio task group (one task to send, one to listen for the
client leaving) and sends each event through every middleware's `send` wrapper. Those wrappers only look at
the response's start (its status and headers), so this response sends the start through them and each
event straight to the server's own `send`, which `RequestIdMiddleware` keeps in ``scope["state"]``.
A client that leaves is noticed by one plain task waiting on `receive`; it cancels the stream, whose
generator is closed there (that aborts the engine request), and the response ends quietly.

A route's work returns `Events` (the generator and what to run when it ends); the gateway's hot path sends them
itself (`Events.send`), a Litestar handler returns them as an `EventStream` (litestar_internals.py, which
holds the Litestar subclasses): the same bytes either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

from litestar.types import HTTPResponseBodyEvent

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

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
