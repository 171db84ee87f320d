"""The SQLite file: pragmas, tables, schema version."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bitinglip.core import DbSettings
from bitinglip.core.db import SCHEMA_VERSION, Database, schema_version


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


def test_processes_creating_the_schema_at_once_do_not_collide(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    go = tmp_path / "go"
    # Each process imports first, then waits for the same moment to start: the race a CLI and a server can hit.
    code = (
        "import asyncio, os, time\n"
        "from bitinglip.core.db import Database\n"
        "from bitinglip.core import DbSettings\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        "async def main():\n"
        f"    db = Database(DbSettings(url={url!r})); await db.start(); await db.stop()\n"
        "asyncio.run(main())\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(6)]
    time.sleep(4)
    go.touch()
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(errors)

    async def rows() -> int:
        db = Database(DbSettings(url=url))
        await db.start()
        async with db.engine.connect() as conn:
            count = len((await conn.execute(sa.select(schema_version))).all())
        await db.stop()
        return count

    import asyncio

    assert asyncio.run(rows()) == 1


async def test_an_older_file_is_migrated_in_place(tmp_path: Path) -> None:
    """A version-1 file (the models table with `serving_pid`) gets the column renamed, its rows kept."""
    import sqlite3

    import bitinglip.models.tables  # noqa: F401  (registers the models table and its migrations)

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL, applied_at TEXT)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute("CREATE TABLE models (name TEXT PRIMARY KEY, serving_pid INTEGER)")
        conn.execute("INSERT INTO models VALUES ('kept', 42)")
    db = Database(DbSettings(url=f"sqlite+aiosqlite:///{path}"))
    await db.start()
    try:
        assert await db.version() == SCHEMA_VERSION
        async with db.engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT name, used_by_pid FROM models"))).all()
        assert rows == [("kept", 42)]
    finally:
        await db.stop()
