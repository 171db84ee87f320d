"""The database: one async engine on SQLite (the embedded default) or PostgreSQL (several instances sharing state),
SQLite's pragmas, and the schema, brought up to date at start by the Alembic revisions in `migrations/`.

Every module declares its tables on ``metadata`` (in its own ``tables.py``); a change to them ships as a new
revision (`scripts/db_revision.py` writes one), the same for both databases. ``Database.start`` runs the revisions
a database has not had, under a lock so that two processes starting at once do not both run them.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bitinglip.core.logging import get_logger
from bitinglip.core.settings import DbSettings

log = get_logger(__name__)

# The newest revision in migrations/versions (a test checks the two agree): a reader compares a database's
# revision with it without importing Alembic, which would cost every quick CLI command its import.
HEAD_REVISION = "0004"
MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant: the key of the PostgreSQL advisory lock held while the schema is brought up to date.
_SCHEMA_LOCK_KEY = 0x6269746C  # "bitl"

metadata = sa.MetaData()


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


def _make_engine(url: str) -> AsyncEngine:
    if sa.engine.make_url(url).get_backend_name() == "sqlite":
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _set_pragmas)
        return engine
    # A pooled connection can outlive a PostgreSQL restart or failover: checked before use, not found dead mid-request.
    return create_async_engine(url, pool_pre_ping=True)


def _upgrade(connection: sa.Connection) -> None:
    """Run the revisions this database has not had, in the caller's transaction (PostgreSQL's DDL is transactional:
    a failed upgrade leaves the schema as it was)."""
    # Alembic's own lines (its plugins on import, "Context impl SQLiteImpl.", one per revision) would go out on
    # every start: this module says what changed in one event instead. Set before the imports that log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None:
        try:
            ScriptDirectory.from_config(config).get_revision(current)
        except CommandError:
            raise RuntimeError(
                f"the database is at schema revision {current}, newer than this release's {HEAD_REVISION}"
            ) from None
    command.upgrade(config, "head")
    if current != HEAD_REVISION:
        log.info("db.schema_upgraded", dialect=connection.dialect.name, revision=HEAD_REVISION, was=current)


class Database:
    def __init__(self, settings: DbSettings) -> None:
        self.url = settings.url
        self.dialect = sa.engine.make_url(self.url).get_backend_name()  # "sqlite" or "postgresql"
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
            self._engine = _make_engine(self.url)
            async with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    # Held to the end of this transaction: instances starting at once upgrade one after the other.
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                await conn.run_sync(_upgrade)
        except BaseException:
            await self.stop()
            raise
        finally:
            if lock is not None:
                lock.close()

    async def open_current(self) -> bool:
        """Open an existing database whose schema is this release's, creating and migrating nothing: a reader
        (`bitinglip models list`) must stay quick and must not write. False, with nothing left open, for a SQLite
        file that is missing, a database not of ours, or one at another revision: `start()` is the way then.
        """
        if self.dialect == "sqlite":
            path = sqlite_path(self.url)
            if path is None or not path.is_file():
                return False
        self._engine = _make_engine(self.url)
        try:
            revision = await self.version()
        except (sa.exc.DBAPIError, OSError):
            revision = None
        if revision != HEAD_REVISION:
            await self.stop()
            return False
        return True

    async def version(self) -> str | None:
        """The schema revision the database is at (Alembic's `alembic_version`); None before the first start."""
        async with self.engine.connect() as conn:
            if not await conn.run_sync(lambda c: sa.inspect(c).has_table("alembic_version")):
                return None
            revision: str | None = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
            return revision

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """True when this process may do the work `name` stands for while the block runs, False when another
        instance on the database is doing it now. PostgreSQL: a session advisory lock, held on a connection of its
        own and dropped with it if the process dies. SQLite: always True (one serving process per file; the
        caller keeps its own process from doing the work twice)."""
        if self.dialect != "postgresql":
            yield True
            return
        async with self.engine.connect() as conn:
            key = sa.func.hashtextextended(name, 0)
            got = bool((await conn.execute(sa.select(sa.func.pg_try_advisory_lock(key)))).scalar())
            await conn.commit()  # nothing else in that transaction: the lock is the session's, not the transaction's
            try:
                yield got
            finally:
                if got:
                    await conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                    await conn.commit()

    def upsert(self, table: sa.Table) -> Any:
        """An INSERT with `on_conflict_do_update`/`on_conflict_do_nothing`, whose SQL both databases share."""
        if self.dialect == "postgresql":
            return sa.dialects.postgresql.insert(table)
        return sa.dialects.sqlite.insert(table)

    async def stop(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
