"""The recent access lines, kept in memory for the dashboard's live requests page (the log has every one)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar.types import Scope

from bitinglip.core import Feed

REQUEST_LOG_SIZE = 1000
# Not worth a line on a live view: probes, the dashboard's own files and its event stream.
QUIET = ("/health", "/ready", "/ui", "/api/events", "/favicon.ico")


class AccessLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    at: str  # when it ended, UTC, ISO 8601
    request_id: str
    method: str
    path: str
    status: int
    ms: float
    model: str | None = None
    key_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None


class RequestLog:
    """An observer of the HTTP edge (`core.Observer`): one append per finished request, nothing else."""

    def __init__(self, size: int = REQUEST_LOG_SIZE) -> None:
        self.feed: Feed[AccessLine] = Feed(size)

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        path: str = scope["path"]
        if path.startswith(QUIET):
            return
        state: dict[str, Any] = scope.get("state", {})
        fields = state.get("log", {})
        self.feed.push(
            AccessLine(
                at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                request_id=state.get("request_id", ""),
                method=str(scope.get("method", "")),
                path=path,
                status=status,
                ms=round(seconds * 1000, 1),
                model=fields.get("model"),
                key_id=fields.get("key_id"),
                prompt_tokens=fields.get("prompt_tokens"),
                completion_tokens=fields.get("completion_tokens"),
                ttft_ms=fields.get("ttft_ms"),
            )
        )
