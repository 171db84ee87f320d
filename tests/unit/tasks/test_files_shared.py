"""Files on PostgreSQL: instances that share the database and no filesystem read each other's files."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from task_support import make_settings

from bitinglip.core import Database, DbSettings
from bitinglip.tasks import FileStore
from bitinglip.tasks.tables import file_chunks


async def test_a_file_uploaded_on_one_instance_is_read_on_another(tmp_path: Path, postgres_server: Any) -> None:
    url = postgres_server.new_url()
    dbs = [Database(DbSettings(url=url)) for _ in range(2)]
    for db in dbs:
        await db.start()
    try:
        # Two machines: each its own files_dir. 2.5 MiB of random bytes: three chunks, the last one short.
        here, there = (FileStore(db, make_settings(tmp_path / name)) for db, name in zip(dbs, ("a", "b"), strict=True))
        content = os.urandom((5 << 20) // 2)
        made = await here.upload(io.BytesIO(content), "in.jsonl", "batch")
        assert not there.path(made.id).exists()
        assert (await there.get(made.id)).bytes == len(content)
        fetched = await there.local_path(made.id)
        assert fetched == there.path(made.id) and fetched.read_bytes() == content
        assert await there.local_path(made.id) == fetched  # the copy is kept: read once

        async with dbs[0].engine.connect() as conn:
            chunks = (await conn.execute(sa.select(sa.func.count()).where(file_chunks.c.file_id == made.id))).scalar()
        assert chunks == 3
        await there.delete(made.id)  # from either instance: the row and the content go
        async with dbs[0].engine.connect() as conn:
            left = (await conn.execute(sa.select(sa.func.count()).select_from(file_chunks))).scalar()
        assert left == 0
    finally:
        for db in dbs:
            await db.stop()


async def test_on_sqlite_the_file_on_disk_is_the_content(tmp_path: Path) -> None:
    db = Database(DbSettings(url=f"sqlite+aiosqlite:///{tmp_path}/bl.db"))
    await db.start()
    try:
        store = FileStore(db, make_settings(tmp_path))
        made = await store.upload(io.BytesIO(b'{"a": 1}\n'), "in.jsonl", "batch")
        assert (await store.local_path(made.id)).read_bytes() == b'{"a": 1}\n'
        async with db.engine.connect() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(file_chunks))).scalar() == 0
    finally:
        await db.stop()
