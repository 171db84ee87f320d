"""The SQLite file: pragmas, tables, schema version."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bitinglip.core.db import SCHEMA_VERSION, Database, schema_version
from bitinglip.core.settings import DbSettings


async def test_start_creates_the_file_with_wal_and_a_schema_version(tmp_path: Path) -> None:
    db = Database(DbSettings(url=f"sqlite+aiosqlite:///{tmp_path}/sub/dir/bl.db"))
    await db.start()
    try:
        assert (tmp_path / "sub/dir/bl.db").is_file()
        async with db.engine.connect() as conn:
            assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar() == 5000
        assert await db.version() == SCHEMA_VERSION
    finally:
        await db.stop()


async def test_restart_keeps_one_version_row_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/bl.db"
    for _ in range(2):
        db = Database(DbSettings(url=url))
        await db.start()
        await db.stop()
    db = Database(DbSettings(url=url))
    await db.start()
    async with db.engine.begin() as conn:
        assert len((await conn.execute(sa.select(schema_version))).all()) == 1
        await conn.execute(schema_version.insert().values(version=SCHEMA_VERSION + 1))
    await db.stop()
    with pytest.raises(RuntimeError, match="newer than this release"):
        await Database(DbSettings(url=url)).start()
