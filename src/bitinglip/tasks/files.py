"""Files (OpenAI's Files API, purpose `batch`): rows in table `files`, contents on disk under `tasks.files_dir`.

A file is written under a temporary name and renamed into place before its row is committed, so a row never
names a half-written file; a file on disk without a row (a crash between the two) is removed by `sweep`.
On PostgreSQL the content is also written to table `file_chunks` with the row, for instances on other machines.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from bitinglip.core import Database, InvalidInput, NotFound, TasksSettings, get_logger
from bitinglip.tasks.store import new_id, page
from bitinglip.tasks.tables import file_chunks, files
from bitinglip.tasks.wire import FileList, FileObject

log = get_logger(__name__)

UPLOAD_PURPOSES = ("batch",)
CHUNK = 1 << 20
MAX_FILENAME = 255  # characters, as most file systems take a name
DEFAULT_FILENAME = "upload.jsonl"


def clean_filename(given: str | None) -> str:
    """The name an upload is listed under: its last path part, without control characters; too long is a 400.

    It is only ever shown (the contents live under the file's id), but it is shown back to clients and in
    terminals: a path or an escape sequence in it is not."""
    name = (given or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if len(name) > MAX_FILENAME:
        raise InvalidInput(
            f"the file's name is {len(name)} characters; at most {MAX_FILENAME} are taken",
            param="file",
            code="filename_too_long",
        )
    return name if name not in ("", ".", "..") else DEFAULT_FILENAME


def to_file(row: Any) -> FileObject:
    m = row._mapping
    return FileObject(
        id=m["id"],
        bytes=m["bytes"],
        created_at=int(m["created_at"]),
        expires_at=int(m["expires_at"]) if m["expires_at"] else None,
        filename=m["filename"],
        purpose=m["purpose"],
    )


class FileStore:
    def __init__(self, db: Database, settings: TasksSettings) -> None:
        self.db = db
        self.settings = settings
        self.dir = Path(settings.files_dir)
        # On PostgreSQL a file's content is kept in the database too (table `file_chunks`): an instance on another
        # machine reads it from there. `files_dir` is then each instance's copy, made on first use.
        self.shared = db.dialect == "postgresql"

    def path(self, file_id: str) -> Path:
        """Where the file is on this machine; `local_path` first makes sure it is there."""
        return self.dir / file_id

    async def local_path(self, file_id: str) -> Path:
        """The file on this machine's disk, copied from the database first when another instance made it."""
        path = self.path(file_id)
        if not self.shared or await asyncio.to_thread(path.exists):
            return path
        query = sa.select(file_chunks.c.data).where(file_chunks.c.file_id == file_id).order_by(file_chunks.c.n)
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.dir / f".{file_id}.{os.getpid()}.fetch"
        async with self.db.engine.connect() as conn:
            chunks = await conn.stream(query)
            with partial.open("wb") as out:
                async for (data,) in chunks:
                    await asyncio.to_thread(out.write, data)
                await asyncio.to_thread(os.fsync, out.fileno())
        partial.rename(path)  # two instances (or requests) fetching at once each rename a whole copy
        log.info("file.fetched", file=file_id, bytes=path.stat().st_size)
        return path

    async def _share(self, conn: Any, file_id: str) -> None:
        """Copy a file just written into the database, in the transaction that adds its row, a chunk at a time."""
        with self.path(file_id).open("rb") as source:
            n = 0
            while data := await asyncio.to_thread(source.read, CHUNK):
                await conn.execute(file_chunks.insert().values(file_id=file_id, n=n, data=data))
                n += 1

    def _expires(self, now: float, lifetime_s: float | None = None) -> float:
        return now + (lifetime_s if lifetime_s is not None else self.settings.retention_days * 86400)

    async def upload(self, source: IO[bytes], filename: str | None, purpose: str, owner: str = "") -> FileObject:
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidInput(
                f"purpose {purpose!r} is not supported here; use one of: {', '.join(UPLOAD_PURPOSES)}",
                param="purpose",
            )
        filename = clean_filename(filename)
        file_id = new_id("file-")
        size = await asyncio.to_thread(self._copy, source, file_id)
        if size > self.settings.max_file_bytes:
            self.path(file_id).unlink(missing_ok=True)
            raise InvalidInput(
                f"the file is {size} bytes; at most {self.settings.max_file_bytes} are taken (tasks.max_file_bytes)",
                param="file",
                code="file_too_large",
            )
        return await self._add(file_id, filename, purpose, size, owner)

    def _copy(self, source: IO[bytes], file_id: str) -> int:
        return self._store(file_id, lambda out: shutil.copyfileobj(source, out, CHUNK))

    async def write(
        self, lines: Iterable[bytes], filename: str, purpose: str, owner: str, conn: Any, lifetime_s: float | None
    ) -> FileObject:
        """A file we produce (a batch's output or errors), its row added in the caller's transaction."""
        file_id = new_id("file-")
        size = await asyncio.to_thread(
            self._store, file_id, lambda out: out.writelines(_one_line(x) + b"\n" for x in lines)
        )
        return await self._insert(conn, file_id, filename, purpose, size, owner, lifetime_s)

    def _store(self, file_id: str, fill: Callable[[IO[bytes]], object]) -> int:
        """Write a file under a temporary name, to disk (fsync), then rename it into place; returns its size."""
        self.dir.mkdir(parents=True, exist_ok=True)
        partial = self.dir / f".{file_id}.part"
        with partial.open("wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        partial.rename(self.path(file_id))
        return size

    async def _insert(
        self, conn: Any, file_id: str, filename: str, purpose: str, size: int, owner: str, lifetime_s: float | None
    ) -> FileObject:
        now = time.time()
        expires = self._expires(now, lifetime_s)
        values = {"id": file_id, "owner": owner, "purpose": purpose, "filename": filename, "bytes": size}
        await conn.execute(files.insert().values(**values, created_at=now, expires_at=expires))
        if self.shared:
            await self._share(conn, file_id)
        log.info("file.created", file=file_id, purpose=purpose, bytes=size)
        return FileObject(
            id=file_id, bytes=size, created_at=int(now), expires_at=int(expires), filename=filename, purpose=purpose
        )

    async def _add(self, file_id: str, filename: str, purpose: str, size: int, owner: str) -> FileObject:
        async with self.db.engine.begin() as conn:
            return await self._insert(conn, file_id, filename, purpose, size, owner, None)

    async def get(self, file_id: str, owner: str = "") -> FileObject:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(sa.select(files).where(files.c.id == file_id, files.c.owner == owner))).first()
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id", code="file_not_found")
        return to_file(row)

    async def list_files(
        self,
        owner: str = "",
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = 10000,
        order: str = "desc",
    ) -> FileList:
        if not 1 <= limit <= 10000:
            raise InvalidInput("limit must be between 1 and 10000", param="limit")
        if order not in ("asc", "desc"):
            raise InvalidInput("order must be asc or desc", param="order")
        query = sa.select(files).where(files.c.owner == owner)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        missing = NotFound(f"No such File object: {after}", param="after", code="file_not_found")
        async with self.db.engine.connect() as conn:
            rows, more = await page(conn, files, query, after, limit, missing, descending=order == "desc")
        data = [to_file(r) for r in rows]
        return FileList(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    async def delete(self, file_id: str, owner: str = "") -> None:
        await self.get(file_id, owner)
        async with self.db.engine.begin() as conn:
            await conn.execute(files.delete().where(files.c.id == file_id))
            await conn.execute(file_chunks.delete().where(file_chunks.c.file_id == file_id))
        self.path(file_id).unlink(missing_ok=True)
        log.info("file.deleted", file=file_id)

    async def sweep(self) -> int:
        """Delete expired files, and files on disk that no row names. Returns how many went."""
        now = time.time()
        async with self.db.engine.begin() as conn:
            expired = [i for (i,) in (await conn.execute(sa.select(files.c.id).where(files.c.expires_at < now))).all()]
            if expired:
                await conn.execute(files.delete().where(files.c.id.in_(expired)))
                await conn.execute(file_chunks.delete().where(file_chunks.c.file_id.in_(expired)))
            known = {i for (i,) in (await conn.execute(sa.select(files.c.id))).all()}
        return await asyncio.to_thread(self._remove_strays, set(expired), known, now)

    def _remove_strays(self, expired: set[str], known: set[str], now: float) -> int:
        if not self.dir.is_dir():
            return 0
        removed = 0
        for entry in self.dir.iterdir():
            name = entry.name
            # Older than an hour only: a file just written has its row committed a moment later.
            old = now - entry.stat().st_mtime > 3600
            stray = old and name not in known  # a crash between writing the file and committing its row
            if name in expired or stray:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


# Characters JSON leaves unescaped that Python's str.splitlines() (and other readers) break lines at; a model's
# text can hold them. Escaped, a JSONL line stays one line however it is read, as OpenAI's files are (all ASCII).
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def _one_line(line: bytes) -> bytes:
    """A JSON document as one JSONL line. In UTF-8 these byte runs can only be those characters, and in JSON they
    can only stand inside strings, where the escape means the same."""
    for raw, escaped in _LINE_BREAKS:
        if raw in line:
            line = line.replace(raw, escaped)
    return line
