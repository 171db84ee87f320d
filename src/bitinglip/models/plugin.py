"""Mounts the model registry's admin routes."""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin

from bitinglip.models.api import model_routes
from bitinglip.models.service import ModelService


class ModelsPlugin(InitPlugin):
    def __init__(self, service: ModelService) -> None:
        self.service = service

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(model_routes(self.service))
        return app_config
