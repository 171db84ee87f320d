"""Mounts the model registry's routes and hands them the ModelService; starting and stopping it is
`Components.running`'s."""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPlugin

from bitinglip.models.api import ModelsController
from bitinglip.models.service import ModelService


class ModelsPlugin(InitPlugin):
    def __init__(self, service: ModelService) -> None:
        self.service = service

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.append(ModelsController)
        app_config.dependencies["models"] = Provide(lambda: self.service, use_cache=True, sync_to_thread=False)
        return app_config
