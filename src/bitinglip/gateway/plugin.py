"""Mounts the OpenAI-compatible edge: routes, the error envelope, request ids and the access log."""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPlugin

from bitinglip.gateway.api import openai_routes
from bitinglip.gateway.errors import handle_error
from bitinglip.gateway.middleware import RequestIdMiddleware
from bitinglip.gateway.serving import OpenAIServing


class GatewayPlugin(InitPlugin):
    def __init__(self, serving: OpenAIServing, access_log: bool = True) -> None:
        self.serving = serving
        self.access_log = access_log

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(openai_routes(self.serving))
        app_config.exception_handlers[Exception] = handle_error
        app_config.middleware.insert(0, DefineMiddleware(RequestIdMiddleware, access_log=self.access_log))
        return app_config
