"""Mounts the model registry: its admin routes, and pulls resumed at start-up and cancelled at shut-down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin

from bitinglip.models.api import model_routes
from bitinglip.models.service import ModelService


class ModelsPlugin(InitPlugin):
    def __init__(self, service: ModelService) -> None:
        self.service = service

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        @asynccontextmanager
        async def lifespan(_app: Any) -> AsyncIterator[None]:
            await self.service.start()
            try:
                yield
            finally:
                await self.service.stop()

        app_config.lifespan.append(lifespan)
        app_config.route_handlers.extend(model_routes(self.service))
        return app_config
