"""The gateway as the app mounts it (keys, limits, usage, metrics, auth) over a scripted engine and a real
database: what the gateway's unit tests run against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar

from bitinglip.app import Components, create_app
from bitinglip.core import Database, LoadedSettings, Settings
from bitinglip.gateway import KeyStore, LimitStore, Metrics, OpenAIServing, Pipeline, UsageRecorder
from doubles import FakeEngines, ScriptedEngine


@dataclass
class Gateway:
    app: Litestar
    serving: OpenAIServing
    pipeline: Pipeline
    db: Database
    keys: KeyStore
    usage: UsageRecorder
    metrics: Metrics
    limits: LimitStore


def build_gateway(
    engine: ScriptedEngine, data: Path, *, auth: bool = False, db_url: str | None = None, **gateway: Any
) -> Gateway:
    """The app as `create_app` builds it, its engines one scripted engine, no deployment declared; its database
    a SQLite file in `data` unless `db_url` names another."""
    tree = {
        "db": {"url": db_url or f"sqlite+aiosqlite:///{data / 'gateway.db'}"},
        "models": {"dir": str(data / "models"), "offline": True},
        "tasks": {"files_dir": str(data / "files")},
        "cluster": {"model": "", "embedding_model": ""},
        # The tests flush usage when they want to read it.
        "gateway": {"auth": auth, "usage_flush_s": 3600, **gateway},
        "server": {"access_log": True},
    }
    loaded = LoadedSettings(settings=msgspec.convert(tree, Settings), sources={}, home=data, settings_dir=None)
    components = Components(loaded, engines=FakeEngines(engine))
    app = create_app(components=components)
    return Gateway(
        app,
        components.openai,
        components.pipeline,
        components.db,
        components.keys,
        components.usage,
        components.metrics,
        components.accounting.limits,
    )
