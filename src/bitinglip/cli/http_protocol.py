"""uvicorn's HTTP protocol with a deadline for a request's headers, which uvicorn itself has not.

A client that opens a connection and sends its headers slowly (or never) held the connection, a socket and
uvicorn's per-connection state for as long as it liked: 50 such connections were all still open after 15 s.
`header_deadline(seconds)` is uvicorn's httptools protocol (its default, passed as `uvicorn.Config(http=...)`,
which takes a protocol class) with one timer per request: started when a connection opens and when a request's
first byte arrives, cancelled when its headers are complete. A connection whose headers are not in by then is
closed. Idle keep-alive connections stay uvicorn's to time out (`server.keep_alive_s`), and a body may take as
long as it takes (the request is the app's by then).

This is the one module that subclasses uvicorn's protocol; `check()` runs at start-up and the unit test
(tests/unit/cli/test_http_protocol.py) drives a real uvicorn server with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bitinglip.core import SettingsError, get_logger

log = get_logger(__name__)
_HOOKS = ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete")


def _base() -> Any:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


def check() -> None:
    """Fail start-up, naming what is missing, if the installed uvicorn lacks what the guard overrides."""
    try:
        base = _base()
    except ImportError as exc:
        raise SettingsError(
            f"uvicorn's httptools protocol is not available ({exc}): pip install 'uvicorn[standard]'"
        ) from exc
    missing = [name for name in _HOOKS if not callable(getattr(base, name, None))]
    if missing:
        raise SettingsError(f"uvicorn's HttpToolsProtocol has no {', '.join(missing)}: the header deadline needs them")


def header_deadline(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers take longer than ``seconds``."""
    check()
    base = _base()

    class HeaderDeadlineProtocol(base):  # type: ignore[misc,valid-type]
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._start()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._start()

        def on_headers_complete(self) -> None:
            self._stop()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop()
            super().connection_lost(exc)

        def _start(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _stop(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                log.info("http.headers_too_slow", client=self.client, timeout_s=seconds)
                self.transport.close()

    return HeaderDeadlineProtocol
