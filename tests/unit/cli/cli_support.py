"""A stand-in server for the commands that are HTTP clients (httpx.MockTransport in place of the network)."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import httpx
import pytest

from bitinglip.cli import main

URL = "http://bitinglip.test:8000"
T0 = 1_750_000_000.0  # when the canned tasks and batches were made


def no_server(url: str = URL) -> str:
    """What a command says when nothing listens at ``url``."""
    return f"bitinglip: no server at {url} (start one with `bitinglip serve` or `make run`)\n"


def closed_url() -> str:
    """The URL of a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def ok(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def error(status: int, message: str, code: str | None = None) -> httpx.Response:
    kinds = {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error"}
    body = {"error": {"message": message, "type": kinds.get(status, "server_error"), "param": None, "code": code}}
    return httpx.Response(status, json=body)


class StandIn:
    """Answers (method, path) with the next of its queued responses (the last one repeats) and records requests."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[httpx.Response | BaseException]] = {}
        self.requests: list[httpx.Request] = []
        self.urls: list[str] = []

    def on(self, method: str, path: str, *answers: httpx.Response | BaseException) -> None:
        self.routes[(method, path)] = list(answers)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return error(404, f"no route {request.method} {request.url.path}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, BaseException):  # KeyboardInterrupt too: a Ctrl-C while waiting
            raise answer
        return answer

    def client(self, url: str) -> httpx.Client:
        self.urls.append(url)
        return httpx.Client(base_url=url, transport=httpx.MockTransport(self.handle))

    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def sent(server: StandIn, index: int = 0) -> Any:
    """The JSON body of the ``index``th request."""
    return json.loads(server.requests[index].content)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> list[list[str]]:
    """Table lines split on the runs of 2+ spaces between columns."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()]
