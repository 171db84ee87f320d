"""`Database.open_current()`: a reader opens a file at this release's schema as it is, and nothing else."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from bitinglip.core import DbSettings
from bitinglip.core.db import HEAD_REVISION, Database


def db_at(path: Path) -> Database:
    return Database(DbSettings(url=f"sqlite+aiosqlite:///{path}"))


async def test_a_current_file_opens_as_it_is(tmp_path: Path) -> None:
    made = db_at(tmp_path / "bl.db")
    await made.start()
    await made.stop()
    db = db_at(tmp_path / "bl.db")
    assert await db.open_current()
    try:
        async with db.engine.connect() as conn:
            assert (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar() == 1  # the same pragmas
        assert await db.version() == HEAD_REVISION
    finally:
        await db.stop()


async def test_a_missing_file_is_not_made(tmp_path: Path) -> None:
    db = db_at(tmp_path / "none" / "bl.db")
    assert not await db.open_current()
    assert not (tmp_path / "none").exists()


async def test_another_version_or_no_schema_is_left_to_start(tmp_path: Path) -> None:
    made = db_at(tmp_path / "old.db")
    await made.start()
    async with made.engine.begin() as conn:  # a file an older release made: it needs its migrations first
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0000'"))
    await made.stop()
    old = db_at(tmp_path / "old.db")
    assert not await old.open_current()
    assert old._engine is None  # nothing left open

    (tmp_path / "other.db").write_bytes(b"")  # an empty file: no alembic_version table
    assert not await db_at(tmp_path / "other.db").open_current()
