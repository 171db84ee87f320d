"""Mounts the web dashboard: its files at `/ui` (public: they hold no data; every call they make sends the key
the user typed) and `GET /api/events`, its live feed."""

from __future__ import annotations

from pathlib import Path

from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPlugin
from litestar.static_files import create_static_files_router

from bitinglip.interfaces.events import EventsController
from bitinglip.interfaces.requests import RequestLog

UI_FILES = Path(__file__).parent / "ui"
UI_PATH = "/ui"


class DashboardPlugin(InitPlugin):
    def __init__(self, request_log: RequestLog) -> None:
        self.request_log = request_log

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(
            [
                EventsController,
                # html_mode: /ui answers index.html; the page routes itself (#/models, #/playground, ...).
                create_static_files_router(
                    UI_PATH, directories=[UI_FILES], html_mode=True, include_in_schema=False, name="dashboard"
                ),
            ]
        )
        app_config.dependencies["request_log"] = Provide(lambda: self.request_log, use_cache=True, sync_to_thread=False)
        return app_config
