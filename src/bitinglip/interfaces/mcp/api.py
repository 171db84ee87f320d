"""BitingLip's own HTTP API, called in process: the MCP tools are clients of it, with the caller's key.

A tool's call is an ordinary request to the running app (through `httpx.ASGITransport`, no socket): the key
check and its scopes, per-key model lists and limits, usage, the access line and the error envelope are the
API's own. The request runs in the tool's task and holds nothing the `/mcp` request holds, so it cannot wait on
it; nothing is counted twice (the `/mcp` request itself generates nothing and records no usage).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import httpx
from litestar.types import ASGIApp

# The headers a key travels in (gateway/auth.py reads the same two); no other header of the caller is forwarded.
KEY_HEADERS = ("authorization", "x-api-key")
REQUEST_ID_HEADER = "x-request-id"
BASE_URL = "http://bitinglip.local"


class ToolFailure(Exception):
    """What a tool answers as an error result (`isError`): the API's own message, or the tool's."""


class LocalApi:
    """One HTTP client on the app itself, opened with the app's lifespan and shared by every tool call."""

    def __init__(self, app: ASGIApp) -> None:
        # No timeout: the call is bounded by the API's own limits (output tokens, queues); it has no socket to
        # stall on. raise_app_exceptions=False: an error the app did not answer itself still comes back as a 500.
        # Any: httpx types ASGI with its own aliases, Litestar with its own; the same three callables.
        transport = httpx.ASGITransport(app=cast(Any, app), raise_app_exceptions=False)
        self.http = httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=None)

    def as_caller(self, headers: Mapping[str, str], request_id: str | None, *, admin: bool) -> Caller:
        """A client that sends the MCP caller's key, and the `/mcp` request's id: one id finds the MCP call and
        every API call it made in the access log. ``admin``: the key may use the admin API (or auth is off)."""
        forwarded = {name: value for name in KEY_HEADERS if (value := headers.get(name)) is not None}
        if request_id:
            forwarded[REQUEST_ID_HEADER] = request_id
        return Caller(self.http, forwarded, admin)

    async def aclose(self) -> None:
        await self.http.aclose()


class Caller:
    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str], admin: bool) -> None:
        self.http = http
        self.headers = headers
        self.admin = admin  # only to leave out what the key could not read anyway; the API still decides

    async def call(self, method: str, path: str, **send: Any) -> Any:
        """The decoded JSON body of a 2xx answer; ToolFailure with the API's message for any other."""
        return (await self.send(method, path, **send)).json()

    async def send(self, method: str, path: str, **send: Any) -> httpx.Response:
        response = await self.http.request(method, path, headers=self.headers, **send)
        if response.status_code >= 400:
            raise ToolFailure(error_text(response))
        return response

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    async def post(self, path: str, body: Any) -> Any:
        return await self.call("POST", path, json=body)


def error_text(response: httpx.Response) -> str:
    """The envelope's message, then its status and code: `this API key has scope ... (403 scope_required)`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        code = error.get("code") or error.get("type")
        return f"{error['message']} ({response.status_code}{f' {code}' if code else ''})"
    return f"{response.status_code} {response.reason_phrase}: {response.text.strip()[:300]}"
