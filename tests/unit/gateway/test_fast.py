"""FastGeneration: the generation routes served past Litestar's handler, and every request it passes on reaching
the handler with its body whole."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import msgspec
import pytest
from gateway_support import Gateway, build_gateway
from litestar import Controller, Litestar, Request, Response
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions import PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.params import JSONBody
from litestar.testing import TestClient

import bitinglip.gateway.api as api
from bitinglip.core import CorePlugin
from bitinglip.gateway.fast import FastGeneration, _Taken
from bitinglip.gateway.generation import Generation, GenerationRoute, generation_post
from bitinglip.gateway.protocol.completion import CompletionRequest
from doubles import ScriptedEngine


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    return build_gateway(ScriptedEngine(), tmp_path)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[TestClient]:
    with TestClient(gateway.app) as c:
        yield c


def test_generation_is_served_without_the_handler(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_handler(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Litestar handler ran")

    monkeypatch.setattr(api, "respond", no_handler)
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    whole = client.post("/v1/chat/completions", json=chat)
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/json"
    assert whole.json()["choices"][0]["message"]["content"] == "Hello there friend"
    assert int(whole.headers["content-length"]) == len(whole.content)
    streamed = client.post("/v1/completions", json={"model": "fake", "prompt": "hi", "max_tokens": 3, "stream": True})
    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert (streamed.headers["cache-control"], streamed.headers["x-accel-buffering"]) == ("no-cache", "no")
    data = [line[6:] for line in streamed.text.split("\n\n") if line.startswith("data: ")]
    assert (
        data[-1] == "[DONE]" and "".join(json.loads(d)["choices"][0]["text"] for d in data[:-1]) == "Hello there friend"
    )
    # Errors raised on the fast path come back in the envelope, with the request id, as the handler's did.
    missing = client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert missing.headers["x-request-id"]


def test_a_body_it_does_not_take_gets_the_handlers_answer(client: TestClient) -> None:
    lax = client.post("/v1/completions", json={"model": "fake", "prompt": "hi", "max_tokens": "2"})
    assert lax.status_code == 200 and lax.json()["usage"]["completion_tokens"] == 2  # "2" taken as the handler does
    unknown = client.post("/v1/completions", json={"model": "fake", "prompt": "hi", "bogus": 1})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "bogus"
    empty = client.post("/v1/completions", content=b"")
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "invalid_json"


class _Handler:
    """Stands in for Litestar's handler: reads the body as it would, all of it."""

    def __init__(self) -> None:
        self.body = b""
        self.messages = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.messages += 1
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                return


def _drive(fast: FastGeneration, chunks: list[bytes]) -> None:
    scope = {"type": "http", "method": "POST", "path_template": "/v1/completions"}
    parts = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> Any:
        return parts.pop(0)

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent for a request passed on")

    asyncio.run(fast(scope, receive, send))


def _fast(handler: _Handler, limit: int | None = None) -> FastGeneration:
    fast = FastGeneration(handler, generation=SimpleNamespace())  # type: ignore[arg-type]
    decoder = msgspec.json.Decoder(CompletionRequest, strict=False)
    taken = _Taken(GenerationRoute("completion", CompletionRequest), decoder, limit)
    fast._taken = lambda scope: taken  # type: ignore[method-assign]
    return fast


def test_a_passed_on_body_reaches_the_handler_whole() -> None:
    handler = _Handler()
    _drive(_fast(handler), [b'{"model": "fake", ', b'"prompt": "hi", ', b'"max_tokens": [}'])
    assert handler.body == b'{"model": "fake", "prompt": "hi", "max_tokens": [}' and handler.messages == 3


def test_a_body_over_the_limit_goes_to_the_handler_unread_past_the_limit() -> None:
    handler = _Handler()
    _drive(_fast(handler, limit=10), [b"x" * 8, b"y" * 8, b"z" * 8])
    assert handler.body == b"x" * 8 + b"y" * 8 + b"z" * 8  # the handler sees it all, and refuses it (413)


def _no_admission(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if connection.headers.get("x-let-me-in") != "yes":
        raise PermissionDeniedException("the guard said no")


class _Other(Controller):
    """A generation route no list of paths names: the hot path finds it by its declaration."""

    path = "/v9"
    handled: ClassVar[list[str]] = []

    @generation_post("/other", codec="completion", body=CompletionRequest, operation_id="other", summary="other")
    async def other(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[CompletionRequest],
    ) -> Response[Any]:
        _Other.handled.append("other")
        return await api.respond(generation, request, data)

    @generation_post(
        "/guarded",
        codec="completion",
        body=CompletionRequest,
        operation_id="guarded",
        summary="g",
        guards=[_no_admission],
    )
    async def guarded(
        self,
        generation: NamedDependency[Generation],
        request: Request[Any, Any, Any],
        data: JSONBody[CompletionRequest],
    ) -> Response[Any]:
        _Other.handled.append("guarded")
        return await api.respond(generation, request, data)


def test_the_fast_path_takes_a_route_by_its_declaration_and_leaves_a_guarded_one_to_its_handler(
    gateway: Gateway,
) -> None:
    generation = Generation(gateway.pipeline, gateway.serving.codecs())
    app = Litestar(
        route_handlers=[_Other],
        plugins=[CorePlugin()],
        dependencies={"generation": Provide(lambda: generation, sync_to_thread=False)},
        middleware=[DefineMiddleware(FastGeneration, generation=generation)],
        logging_config=None,
    )
    _Other.handled.clear()
    body = {"model": "fake", "prompt": "hi", "max_tokens": 3}
    with TestClient(app) as client:
        taken = client.post("/v9/other", json=body)
        assert taken.status_code == 200 and taken.json()["choices"][0]["text"] == "Hello there friend"
        assert _Other.handled == []  # served by the hot path: the handler never ran
        refused = client.post("/v9/guarded", json=body)
        assert refused.status_code == 403 and refused.json()["error"]["message"] == "the guard said no"
        assert _Other.handled == []
        allowed = client.post("/v9/guarded", json=body, headers={"x-let-me-in": "yes"})
        assert allowed.status_code == 200 and _Other.handled == ["guarded"]  # through its handler, guard and all
