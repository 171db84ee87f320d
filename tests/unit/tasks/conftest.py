"""The `env` fixture: a queue, files and batches on a real database: a SQLite file in tmp_path, then PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from task_support import Env, FakeCapacity, Work, build_queue, make_settings

from bitinglip.core import Database, DbSettings
from bitinglip.tasks import BatchService, FileStore


@pytest.fixture
async def env(tmp_path: Path, db_url: str) -> AsyncIterator[Env]:
    db = Database(DbSettings(url=db_url))
    await db.start()
    settings = make_settings(tmp_path)
    capacity, work = FakeCapacity(), Work()
    queue = build_queue(db, settings, capacity, work)
    files = FileStore(db, settings)
    e = Env(db, settings, capacity, work, queue, files, BatchService(db, settings, queue, files))
    yield e
    e.work.gate.set()
    await e.queue.stop()
    await db.stop()
