"""Mounts the MCP server at `/mcp` (streamable HTTP) and runs its session manager in the app's lifespan.

- **One route, not a mount.** MCP's streamable HTTP is one endpoint (POST here; GET and DELETE are 405), so
  `/mcp` is a plain ASGI route: Litestar keeps its path in the scope, the key check (gateway/auth.py) sees
  `/mcp` and wants an inference or admin key there when auth is on, and the access line says `/mcp`. (A mount
  would hand its app the path below the mount, `/`, which the key check takes for the public root.)
- **Stateless, JSON answers.** Each POST is a whole exchange with its own key: nothing of a session is kept
  between requests, so a key that is revoked stops working at once and any number of clients cost no memory.
  The tools ask nothing of the client mid-call, which is all a session would add.
- **DNS rebinding.** Where no key is needed (auth off, on a loopback address) the `Host` and `Origin` of each
  request must be local, as the MCP specification asks: a web page cannot reach the tools through a name
  it rebinds to 127.0.0.1. With auth on, the key is the guard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

from litestar import Litestar, asgi
from litestar.config.app import AppConfig
from litestar.exceptions import MethodNotAllowedException
from litestar.plugins import InitPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from bitinglip.interfaces.mcp.api import LocalApi

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from bitinglip.interfaces.mcp.server import McpServer

MCP_PATH = "/mcp"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class McpPlugin(InitPlugin):
    def __init__(self, *, host: str, auth: bool) -> None:
        # The SDK is a second of imports: it loads when an app is built, not for every CLI command (they import
        # the composition root, and so this module, too).
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        from bitinglip.interfaces.mcp.server import McpServer

        self.server: McpServer = McpServer()
        local = not auth and host.strip("[]") in LOOPBACK
        security = (
            TransportSecuritySettings(
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            )
            if local
            else None
        )
        # Built with the app and run once (its run() may not be entered twice): one per create_app.
        self.sessions: StreamableHTTPSessionManager = StreamableHTTPSessionManager(
            app=self.server.lowlevel, json_response=True, stateless=True, security_settings=security
        )

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        # The SDK types ASGI with Starlette's aliases, Litestar with its own: the same three callables.
        handle = cast(ASGIApp, self.sessions.handle_request)

        # copy_scope: what the SDK writes into the scope stays there; the state (key, log fields) is shared.
        @asgi(MCP_PATH, copy_scope=True, name="mcp")
        async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("method") != "POST":
                # Stateless: no stream to GET (the SDK would hold one open for ever) and no session to DELETE.
                raise MethodNotAllowedException()

            async def send_int_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["status"] = int(message["status"])  # the SDK's is an HTTPStatus: logs want the number
                await send(message)

            await handle(scope, receive, send_int_status)

        app_config.route_handlers.append(mcp)
        app_config.lifespan.append(self.running)  # after the components': the tools need them up
        return app_config

    @asynccontextmanager
    async def running(self, app: Litestar) -> AsyncIterator[None]:
        api = LocalApi(app)
        self.server.api = api
        try:
            async with self.sessions.run():
                yield
        finally:
            self.server.api = None
            await api.aclose()
