"""No request stalls the server: each hostile or careless request below, sent to the real server, is answered
(mostly refused by size before any work) while `/health`, polled all along from another thread, stays fast, and
the server is ready after."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from e2e.conftest import EMBEDDING_MODEL, MODEL, Server

HEALTH_BOUND_S = 0.25  # the slowest /health answer allowed while a case runs (2 cores, engine busy)
HI = [{"role": "user", "content": "hi"}]


class HealthWatch:
    """Polls /health every 20 ms on its own thread and keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                began = time.perf_counter()
                assert client.get(f"{self.url}/health").status_code == 200
                self.slowest = max(self.slowest, time.perf_counter() - began)
                self.answers += 1
                self._stop.wait(0.02)

    @contextlib.contextmanager
    def running(self) -> Iterator[HealthWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(15)


@contextlib.contextmanager
def health_stays_fast(server: Server) -> Iterator[HealthWatch]:
    with HealthWatch(server.url).running() as watch:
        yield watch
    assert watch.answers >= 3, "the case was too short to see /health answer"
    assert watch.slowest < HEALTH_BOUND_S, f"/health took {watch.slowest * 1000:.0f} ms"
    assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 200


def _post(server: Server, route: str, body: Any, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}{route}", content=content, headers={"content-type": "application/json"}, timeout=timeout
    )


def test_logprob_heavy_streams_are_refused_and_the_largest_allowed_one_does_not_stall(server: Server) -> None:
    heavy = {"model": MODEL, "prompt": "hi", "n": 64, "logprobs": 20, "max_tokens": 1500, "ignore_eos": True}
    with health_stays_fast(server):
        for _ in range(4):
            refused = _post(server, "/v1/completions", {**heavy, "stream": True})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "too_many_logprobs"
        allowed = {**heavy, "n": 16, "logprobs": 15, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=allowed, timeout=120) as streamed:
            assert streamed.status_code == 200
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 16


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/completions", {"model": MODEL, "prompt": "word " * 1_000_000}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "word " * 1_000_000}]}),
        ("/tokenize", {"model": MODEL, "prompt": "word " * 1_000_000}),
        ("/v1/embeddings", {"model": EMBEDDING_MODEL, "input": "word " * 1_000_000}),
    ],
)
def test_a_five_megabyte_prompt_is_refused_unread(server: Server, route: str, body: dict[str, Any]) -> None:
    with health_stays_fast(server):
        began = time.perf_counter()
        refused = _post(server, route, body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
        assert time.perf_counter() - began < 2.0
        time.sleep(0.1)


def test_a_megabyte_of_tools_is_refused(server: Server) -> None:
    schema = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "description": "x" * 40} for i in range(15_000)},
    }
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    with health_stays_fast(server):
        refused = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": HI, "tools": tools})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "tools_too_large"
        time.sleep(0.1)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/tokenize"])
def test_json_nested_ten_thousand_deep_is_a_400(server: Server, route: str) -> None:
    deep = b"{" + b'"a":{' * 10_000 + b"}" * 10_001
    field = b'"structured_outputs": ' if route != "/tokenize" else b'"tools": [{"type": "function", "function": '
    tail = b"}" if route != "/tokenize" else b"}]}"
    body = (
        b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "hi"}], ' + field + deep + tail
    )
    with health_stays_fast(server):
        refused = _post(server, route, body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json"
        time.sleep(0.1)
    assert "RecursionError" not in server.log()


def test_a_hundred_thousand_way_choice_is_refused_at_once(server: Server) -> None:
    choice = [f"option {i}" for i in range(100_000)]
    body = {"model": MODEL, "messages": HI, "structured_outputs": {"choice": choice}}
    with health_stays_fast(server):
        began = time.perf_counter()
        refused = _post(server, "/v1/chat/completions", body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "constraint_too_large"
        assert time.perf_counter() - began < 2.0
        time.sleep(0.1)


def test_connections_that_send_their_headers_slowly_are_closed(server: Server) -> None:
    timeout_s = 5.0  # server.header_timeout_s's default
    port = int(server.url.rsplit(":", 1)[1])

    async def trickle() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        try:
            for _ in range(int(timeout_s * 4)):  # a header line every half second, never the end
                await asyncio.sleep(0.5)
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                if reader.at_eof():
                    return True
            return await asyncio.wait_for(reader.read(), 2) == b""
        except (ConnectionError, TimeoutError, OSError):
            return True
        finally:
            writer.close()

    async def fifty() -> list[bool]:
        return await asyncio.gather(*(trickle() for _ in range(50)))

    with health_stays_fast(server):
        began = time.perf_counter()
        closed = asyncio.run(fifty())
        assert all(closed) and time.perf_counter() - began < timeout_s * 2 + 3
    with socket.create_connection(("127.0.0.1", port), timeout=5) as ok:  # a prompt client is served as before
        ok.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.recv(64).startswith(b"HTTP/1.1 200")
