"""The Alembic revisions: one head, named in `db.HEAD_REVISION`; on both databases they make exactly the schema
the tables declare."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import bitinglip.cluster.tables
import bitinglip.gateway.tables
import bitinglip.models.tables
import bitinglip.tasks.tables  # noqa: F401  (each registers its tables)
from bitinglip.core import Database, DbSettings
from bitinglip.core.db import HEAD_REVISION, MIGRATIONS, metadata


def test_one_head_and_the_constant_names_it() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


async def test_the_revisions_make_the_schema_the_tables_declare(db_url: str) -> None:
    db = Database(DbSettings(url=db_url))
    await db.start()
    try:
        async with db.engine.connect() as conn:
            differences = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    finally:
        await db.stop()
    assert differences == []
    assert {t.name for t in metadata.sorted_tables} | {"alembic_version"} == tables
