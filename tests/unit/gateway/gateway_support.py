"""The gateway as the app mounts it (keys, limits, usage, metrics, auth) over a scripted engine and a real
SQLite file: what the gateway's unit tests run against."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar

from bitinglip.core import CorePlugin, Database, DbSettings, GatewaySettings
from bitinglip.gateway import (
    Accounting,
    Authenticator,
    GatewayPlugin,
    KeyStore,
    MemoryLimitStore,
    Metrics,
    OpenAIServing,
    UsageRecorder,
)
from doubles import FakeEngines, ScriptedEngine


@dataclass
class Gateway:
    app: Litestar
    serving: OpenAIServing
    db: Database
    keys: KeyStore
    usage: UsageRecorder
    metrics: Metrics
    limits: MemoryLimitStore


def build_gateway(engine: ScriptedEngine, data: Path, *, auth: bool = False, **settings: Any) -> Gateway:
    gateway_settings = msgspec.convert(settings, GatewaySettings)
    db = Database(DbSettings(url=f"sqlite+aiosqlite:///{data / 'gateway.db'}"))
    serving = OpenAIServing(FakeEngines(engine))
    keys = KeyStore(db)
    usage = UsageRecorder(db, flush_s=3600)  # the tests flush when they want to read
    metrics = Metrics()
    limits = MemoryLimitStore()
    accounting = Accounting(limits, usage, metrics, gateway_settings)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await db.start()
        await usage.start()
        try:
            yield
        finally:
            await usage.stop()
            await db.stop()

    app = Litestar(
        plugins=[
            CorePlugin(observers=[metrics.observe_http]),
            GatewayPlugin(serving, accounting, keys, Authenticator(keys, gateway_settings) if auth else None),
        ],
        lifespan=[lifespan],
        logging_config=None,
    )
    return Gateway(app, serving, db, keys, usage, metrics, limits)
