"""The database: SQLite's pragmas, the schema brought to this release's revision, once, under a lock."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import sqlalchemy as sa

from bitinglip.core import DbSettings
from bitinglip.core.db import HEAD_REVISION, Database


async def test_start_creates_the_file_with_wal_at_the_head_revision(tmp_path: Path) -> None:
    db = Database(DbSettings(url=f"sqlite+aiosqlite:///{tmp_path}/sub/dir/bl.db"))
    await db.start()
    try:
        assert (tmp_path / "sub/dir/bl.db").is_file()
        async with db.engine.connect() as conn:
            assert (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar() == 5000
        assert await db.version() == HEAD_REVISION
    finally:
        await db.stop()


async def test_restart_keeps_one_version_row_and_refuses_a_newer_schema(db_url: str) -> None:
    for _ in range(2):
        db = Database(DbSettings(url=db_url))
        await db.start()
        await db.stop()
    db = Database(DbSettings(url=db_url))
    await db.start()
    async with db.engine.begin() as conn:
        assert (await conn.execute(sa.text("SELECT count(*) FROM alembic_version"))).scalar() == 1
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))  # a later release's
    await db.stop()
    with pytest.raises(RuntimeError, match="newer than this release"):
        await Database(DbSettings(url=db_url)).start()


def test_processes_creating_the_schema_at_once_do_not_collide(tmp_path: Path, db_url: str) -> None:
    import subprocess
    import sys
    import time

    url = db_url
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
            count = (await conn.execute(sa.text("SELECT count(*) FROM alembic_version"))).scalar()
            assert await db.version() == HEAD_REVISION
        await db.stop()
        return int(count or 0)

    import asyncio

    assert asyncio.run(rows()) == 1


async def test_an_older_file_is_migrated_in_place(tmp_path: Path) -> None:
    """A file from before Alembic at version 1 (the models table with `serving_pid`, the `schema_version` table)
    gets the column renamed and the columns added, its rows kept, and the tables it lacked."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL, applied_at TEXT)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute("CREATE TABLE models (name TEXT PRIMARY KEY, serving_pid INTEGER)")
        conn.execute("INSERT INTO models VALUES ('kept', 42)")
    db = Database(DbSettings(url=f"sqlite+aiosqlite:///{path}"))
    await db.start()
    try:
        assert await db.version() == HEAD_REVISION
        async with db.engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT name, used_by_pid, kind, host FROM models"))).all()
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert rows == [("kept", 42, "model", socket.gethostname())]  # a row from before hosts: this machine's
        assert {"api_keys", "usage", "tasks", "batches", "files", "responses"} <= tables
        assert "schema_version" not in tables
    finally:
        await db.stop()


async def test_exclusive_work_is_one_instances_at_a_time(db_url: str) -> None:
    """On PostgreSQL a second instance asking for the same work while the first holds it is told no; the work is
    free again once the first is done. SQLite (one serving process) always says yes."""
    first, second = Database(DbSettings(url=db_url)), Database(DbSettings(url=db_url))
    await first.start()
    await second.start()
    try:
        async with first.exclusive("batch:b1") as mine:
            assert mine
            async with second.exclusive("batch:b1") as theirs, second.exclusive("batch:b2") as other:
                assert theirs is (first.dialect == "sqlite")
                assert other  # other work is free
        async with second.exclusive("batch:b1") as theirs:
            assert theirs
    finally:
        await first.stop()
        await second.stop()
