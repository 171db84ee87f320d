"""Request ids and the access log, as plain ASGI middleware (cheap on the hot path).

The id is taken from `X-Request-ID` when a client sends a sane one, otherwise made; it is bound to
structlog's context so every line logged for the request carries it, and returned in the same header.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog

from bitinglip.core.logging import get_logger

log = get_logger("bitinglip.access")
HEADER = b"x-request-id"
_SANE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
QUIET_PATHS = {"/health", "/ready"}


def request_id_of(scope: dict[str, Any]) -> str:
    return scope["state"]["request_id"]


class RequestIdMiddleware:
    def __init__(self, app: Any, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        request_id = given.decode() if given and _SANE.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log and scope["path"] not in QUIET_PATHS:
                log.info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )
            structlog.contextvars.unbind_contextvars("request_id")
