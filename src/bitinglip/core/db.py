"""The SQLite database: one async engine, the pragmas we rely on, tables and a schema version.

Every module declares its tables on ``metadata`` (in its own ``tables.py``) and registers the SQL that
brings an older file up to date with ``migration()``; ``Database.start`` creates what is missing, runs the
migrations the file has not had, and records the schema version.
"""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bitinglip.core.settings import DbSettings

SCHEMA_VERSION = 3  # raise it with each migration a module registers

metadata = sa.MetaData()
# to version -> SQL statements that take a file from the version before to it
_migrations: dict[int, list[str]] = {}


def migration(to_version: int, *statements: str) -> None:
    """Register SQL that upgrades an existing database to ``to_version`` (a module's tables.py calls this)."""
    if not 1 < to_version <= SCHEMA_VERSION:
        raise ValueError(f"migration to version {to_version}: SCHEMA_VERSION is {SCHEMA_VERSION}")
    _migrations.setdefault(to_version, []).extend(statements)


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes a writer wait instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _lock(path: Path) -> IO[bytes]:
    handle = path.open("ab")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def sqlite_path(url: str) -> Path | None:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


class Database:
    def __init__(self, settings: DbSettings) -> None:
        self.url = settings.url
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("database not started")
        return self._engine

    async def start(self) -> None:
        path = sqlite_path(self.url)
        lock = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Two processes creating the schema at once (a server and a CLI, or two CLIs) race on CREATE TABLE;
            # an exclusive lock file serializes that step. The kernel drops it if the process dies.
            lock = await asyncio.to_thread(_lock, path.with_name(f"{path.name}.init-lock"))
        try:
            self._engine = create_async_engine(self.url)
            event.listen(self._engine.sync_engine, "connect", _set_pragmas)
            await self._create_schema()
        finally:
            if lock is not None:
                lock.close()

    async def open_current(self) -> bool:
        """Open an existing file whose schema is this release's, creating and migrating nothing: a reader that
        imports only the tables it reads (`bitinglip models list`) must not start the schema, which would run only
        the migrations of the modules it imported and then record the file as current. False, with nothing left
        open, for a file that is missing, not a database of ours, or at another version: `start()` is the way then.
        """
        path = sqlite_path(self.url)
        if path is None or not path.is_file():
            return False
        self._engine = create_async_engine(self.url)
        event.listen(self._engine.sync_engine, "connect", _set_pragmas)
        try:
            version = await self.version()
        except sa.exc.DBAPIError:  # no schema_version table: not made by `start()`
            version = None
        if version != SCHEMA_VERSION:
            await self.stop()
            return False
        return True

    async def _create_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            current = (await conn.execute(sa.select(sa.func.max(schema_version.c.version)))).scalar()
            if current is None:  # a new file: create_all made today's schema
                await conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            elif current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database {self.url} has schema version {current}, newer than this release's {SCHEMA_VERSION}"
                )
            elif current < SCHEMA_VERSION:
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in _migrations.get(version, []):
                        await conn.execute(sa.text(statement))
                await conn.execute(sa.update(schema_version).values(version=SCHEMA_VERSION))

    async def version(self) -> int | None:
        async with self.engine.connect() as conn:
            version: int | None = (await conn.execute(sa.select(sa.func.max(schema_version.c.version)))).scalar()
            return version

    async def stop(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
