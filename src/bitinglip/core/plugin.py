"""Mounts the database on the app: opened first at start-up, closed last."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin

from bitinglip.core.db import Database


class CorePlugin(InitPlugin):
    def __init__(self, db: Database) -> None:
        self.db = db

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        @asynccontextmanager
        async def lifespan(_app: Any) -> AsyncIterator[None]:
            await self.db.start()
            try:
                yield
            finally:
                await self.db.stop()

        app_config.lifespan.append(lifespan)
        return app_config
