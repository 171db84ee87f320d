"""The header deadline on a real uvicorn server: a connection that trickles its headers is closed; a request that
sends them in time, and a keep-alive connection between requests, are served as before."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from bitinglip.cli.http_protocol import header_deadline


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def _server(deadline_s: float) -> AsyncIterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=header_deadline(deadline_s), log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _closed(reader: asyncio.StreamReader, within_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within_s) == b""
    except TimeoutError:
        return False


async def test_a_connection_that_trickles_its_headers_is_closed() -> None:
    async with _server(0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        assert await _closed(reader, 3.0)
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)  # opens, sends nothing
        assert await _closed(silent_reader, 3.0)
        writer.close()
        silent.close()


async def test_requests_in_time_are_served_and_keep_alive_is_not_cut() -> None:
    async with _server(0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(2) == b"ok"
            await asyncio.sleep(0.8)  # idle between requests, longer than the header deadline: still open
        assert not reader.at_eof()
        writer.close()
