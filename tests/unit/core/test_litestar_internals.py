"""Each use of Litestar's internals (core/litestar_internals.py) against the pinned Litestar, through real apps:
an upgrade that changes one of them fails here, by name."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.datastructures import ResponseHeader
from litestar.middleware import DefineMiddleware
from litestar.testing import TestClient
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from bitinglip.core import (
    CorePlugin,
    Events,
    EventStream,
    FinalEvent,
    InvalidInput,
    SettingsError,
    handler_body_limit,
    route_handler_of,
    send_error,
    skipped_by_bypass,
)
from bitinglip.core.litestar_internals import LITESTAR_VERSION, check, wrap_whole_app


def test_the_installed_litestar_is_the_pinned_one_and_has_what_is_used() -> None:
    assert importlib.metadata.version("litestar") == LITESTAR_VERSION
    check()


def test_another_litestar_stops_start_up_naming_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9")
    with pytest.raises(SettingsError, match=f"litestar=={LITESTAR_VERSION}.*found 9.9.9"):
        check()


class _Seen:
    """Route middleware that records what it finds of the matched handler, then answers or goes on."""

    found: list[Any] = []  # noqa: RUF012 (a test's record)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = route_handler_of(scope)
        assert handler is not None
        _Seen.found.append((handler.opt.get("mark"), handler_body_limit(handler), skipped_by_bypass(handler)))
        if handler.opt.get("mark") == "error":
            await send_error(scope, receive, send, InvalidInput("refused here", param="x"))
            return
        await self.app(scope, receive, send)


async def _no_op(*args: Any) -> None:
    return None


@post("/plain", opt={"mark": "plain"}, request_max_body_size=1234, status_code=200)
async def plain() -> str:
    return "ok"


@post(
    "/busy",
    opt={"mark": "busy"},
    guards=[lambda connection, handler: None],
    before_request=_no_op,
    response_headers=[ResponseHeader(name="x-extra", value="1")],
    status_code=200,
)
async def busy() -> str:
    return "ok"


@post("/error", opt={"mark": "error"})
async def error() -> str:
    raise AssertionError("the middleware answers first")


def test_route_middleware_finds_the_matched_handler_its_opt_body_limit_and_what_a_bypass_would_skip() -> None:
    _Seen.found = []
    app = Litestar([plain, busy, error], middleware=[DefineMiddleware(_Seen)], plugins=[CorePlugin()])
    with TestClient(app) as client:
        assert client.post("/plain").text == "ok"
        assert client.post("/busy").headers["x-extra"] == "1"
        refused = client.post("/error")
    assert _Seen.found[0] == ("plain", 1234, [])
    assert _Seen.found[1][0] == "busy" and _Seen.found[1][2] == ["guards", "before_request", "response_headers"]
    # An error sent from outside a handler: our exception handler's envelope and status, the request id too.
    assert refused.status_code == 400 and refused.json()["error"] == {
        "message": "refused here",
        "type": "invalid_request_error",
        "param": "x",
        "code": "invalid_value",
    }
    assert refused.headers["x-request-id"]


class _Counting:
    """Middleware whose `send` wrapper counts what passes through it."""

    messages: list[str] = []  # noqa: RUF012 (a test's record)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            _Counting.messages.append(message["type"])
            await send(message)

        await self.app(scope, receive, counted)


def test_an_event_stream_sends_its_events_past_middleware_wrappers_and_closes_once() -> None:
    closed: list[str] = []

    async def events() -> AsyncGenerator[bytes, None]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"
        yield FinalEvent(b"data: [DONE]\n\n")

    @get("/events")
    async def stream() -> EventStream:
        return EventStream.of(Events(events(), on_close=lambda: closed.append("closed")))

    _Counting.messages = []
    app = Litestar([stream], middleware=[DefineMiddleware(_Counting)], plugins=[CorePlugin()])
    with TestClient(app) as client:
        response = client.get("/events")
    assert response.text == "data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache" and response.headers["x-request-id"]
    assert _Counting.messages == ["http.response.start"]  # the body went to the server's own send
    assert closed == ["closed"]


def test_the_whole_app_wrapper_sees_unmatched_requests_and_wraps_once() -> None:
    seen: list[str] = []

    def wrap(inner: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope.get("path", ""))
            await inner(scope, receive, send)

        return wrapped

    def on_startup(app: Litestar) -> None:
        wrap_whole_app(app, wrap)
        wrap_whole_app(app, wrap)  # a second call changes nothing

    app = Litestar([plain], on_startup=[on_startup])
    with TestClient(app) as client:
        assert client.get("/nowhere").status_code == 404
    assert seen == ["/nowhere"]


def test_a_request_is_what_the_error_path_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """`send_error` builds a Litestar `Request` from the bare scope: the scope a route middleware sees suffices."""
    built: list[Request[Any, Any, Any]] = []
    original = Request.__init__

    def spy(self: Request[Any, Any, Any], *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(Request, "__init__", spy)
    _Seen.found = []
    app = Litestar([error], middleware=[DefineMiddleware(_Seen)], plugins=[CorePlugin()])
    with TestClient(app) as client:
        assert client.post("/error").status_code == 400
    assert built and built[-1].url.path == "/error" and built[-1].method == "POST"
