"""Mounts the OpenAI-compatible routes and hands them the serving layer."""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPlugin

from bitinglip.gateway.api import OpenAIController
from bitinglip.gateway.serving import OpenAIServing


class GatewayPlugin(InitPlugin):
    def __init__(self, openai: OpenAIServing) -> None:
        self.openai = openai

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.append(OpenAIController)
        app_config.dependencies["openai"] = Provide(lambda: self.openai, use_cache=True, sync_to_thread=False)
        return app_config
