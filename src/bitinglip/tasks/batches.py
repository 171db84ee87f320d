"""OpenAI batches over the task queue: one task per input line, the output and error files written at the end.

    validating ──► in_progress ──► finalizing ──► completed
        │              ├─────────► cancelling ──► (finalizing) ──► cancelled
        └─► failed     └─────────► (finalizing) ──► expired          (past its completion_window)

Every state lives in the database, so a restarted server picks up where it stopped: a batch still
`validating` is checked again (its tasks are inserted in the same transaction that leaves `validating`),
one whose lines have all ended is finalized, and its lines themselves come back through their leases. The
output file is written from the task rows, one line per input line, when the batch ends: nothing lost,
nothing twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import sqlalchemy as sa

from bitinglip.core import Conflict, Database, InvalidInput, NotFound, TasksSettings, get_logger, parse_duration
from bitinglip.tasks.batch_input import Line, read_lines
from bitinglip.tasks.batch_output import output_lines
from bitinglip.tasks.files import FileStore
from bitinglip.tasks.queue import TaskQueue
from bitinglip.tasks.store import TaskStore, new_id, page
from bitinglip.tasks.tables import batches, tasks
from bitinglip.tasks.wire import (
    ACTIVE_BATCH,
    Batch,
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchList,
    BatchUsage,
    RequestCounts,
)

log = get_logger(__name__)

SWEEP_EVERY_S = 3600.0
FINAL = {"cancelling": "cancelled", "expiring": "expired"}


def _ts(value: float | None) -> int | None:
    return int(value) if value is not None else None


class BatchService:
    def __init__(
        self,
        db: Database,
        settings: TasksSettings,
        queue: TaskQueue,
        files: FileStore,
        models_of: Callable[[str], Awaitable[list[str] | None]] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.queue = queue
        self.store: TaskStore = queue.store
        self.files = files
        self._busy: set[str] = set()  # batches being validated or finalized by this process
        # The models an owner (an API key) may use, None for any (no keys).
        self.models_of = models_of
        self._swept = 0.0
        queue.on_written = self.lines_ended
        queue.on_tick = self.tick

    # -- the API

    async def create(self, body: BatchCreate, owner: str = "") -> Batch:
        kind = self.queue.kind_for_endpoint(body.endpoint)
        if kind is None:
            endpoints = sorted(k.endpoint for k in self.queue.kinds.values() if k.endpoint)
            raise InvalidInput(
                f"endpoint {body.endpoint!r} is not supported; use one of: {', '.join(endpoints)}", param="endpoint"
            )
        window = parse_duration(body.completion_window, "completion_window")
        longest = parse_duration(self.settings.max_completion_window, "tasks.max_completion_window")
        if not 0 < window <= longest:
            raise InvalidInput(
                f"completion_window must be more than 0 and at most {self.settings.max_completion_window}",
                param="completion_window",
            )
        meta = body.metadata or {}
        if len(meta) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in meta.items()):
            raise InvalidInput(
                "metadata takes at most 16 pairs, keys up to 64 and values up to 512 characters", param="metadata"
            )
        expiry = body.output_expires_after
        if expiry is not None and not 3600 <= expiry.seconds <= 30 * 86400:
            raise InvalidInput(
                "output_expires_after.seconds must be between 3600 (1 hour) and 2592000 (30 days)",
                param="output_expires_after.seconds",
            )
        source = await self.files.get(body.input_file_id, owner)
        if source.purpose != "batch":
            raise InvalidInput(
                f"file {source.id} has purpose {source.purpose!r}; a batch reads a file uploaded with purpose batch",
                param="input_file_id",
            )
        now = time.time()
        batch_id = new_id("batch_")
        async with self.db.engine.begin() as conn:
            await conn.execute(
                batches.insert().values(
                    id=batch_id,
                    owner=owner,
                    endpoint=body.endpoint,
                    kind=kind,
                    input_file_id=source.id,
                    completion_window=body.completion_window,
                    status="validating",
                    priority=body.priority,
                    metadata=msgspec.json.encode(body.metadata).decode() if body.metadata is not None else None,
                    output_expires_s=expiry.seconds if expiry is not None else None,
                    created_at=now,
                    expires_at=now + window,
                )
            )
        await self._validate(batch_id)
        return await self.get(batch_id, owner)

    async def get(self, batch_id: str, owner: str = "") -> Batch:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(batches).where(batches.c.id == batch_id, batches.c.owner == owner))
            ).first()
        if row is None:
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id", code="batch_not_found")
        return _to_batch(row, await self.store.counts(row.id))

    async def list_batches(self, owner: str = "", *, after: str | None = None, limit: int = 20) -> BatchList:
        if not 1 <= limit <= 100:
            raise InvalidInput("limit must be between 1 and 100", param="limit")
        query = sa.select(batches).where(batches.c.owner == owner)
        missing = NotFound(f"No such Batch object: {after}", param="after", code="batch_not_found")
        async with self.db.engine.connect() as conn:
            rows, more = await page(conn, batches, query, after, limit, missing)
        counts = await self.store.counts_of([r.id for r in rows])
        data = [_to_batch(r, counts.get(r.id, {})) for r in rows]
        return BatchList(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    async def cancel(self, batch_id: str, owner: str = "") -> Batch:
        batch = await self.get(batch_id, owner)
        if batch.status in ("cancelling", "cancelled"):
            return batch
        if batch.status not in ("validating", "in_progress"):
            raise Conflict(f"Cannot cancel a batch with status {batch.status}", param="batch_id", code="batch_ended")
        await self._set(batch_id, "cancelling", cancelling_at=time.time())
        log.info("batch.cancelling", batch=batch_id)
        await self._end_lines(batch_id, owner, "cancelled")
        await self._finalize(batch_id)
        return await self.get(batch_id, owner)

    # -- the work

    async def _validate(self, batch_id: str) -> None:
        if batch_id in self._busy:
            return
        self._busy.add(batch_id)
        try:
            async with self.db.exclusive(f"batch:{batch_id}") as mine:
                if mine:  # else another instance is validating it
                    await self._validate_mine(batch_id)
        finally:
            self._busy.discard(batch_id)

    async def _validate_mine(self, batch_id: str) -> None:
        try:
            row = await self._row(batch_id)
            if row.status != "validating":
                return
            handler = self.queue.kinds[row.kind]
            source = await self.files.local_path(row.input_file_id)
            lines, errors = await asyncio.to_thread(
                read_lines,
                source,
                endpoint=row.endpoint,
                target_of=handler.target,
                known=await self.queue.capacity.known(),
                allowed=await self.models_of(row.owner) if self.models_of is not None else None,
                max_lines=self.settings.max_batch_lines,
                max_bytes=self.settings.max_file_bytes,
            )
            if errors:
                await self._set(
                    batch_id,
                    "failed",
                    failed_at=time.time(),
                    errors=msgspec.json.encode(errors).decode(),
                    total=0,
                )
                log.info("batch.failed", batch=batch_id, errors=len(errors), first=errors[0].message)
                return
            await self._start_lines(row, lines)
        except FileNotFoundError:
            await self._set(
                batch_id,
                "failed",
                failed_at=time.time(),
                errors=msgspec.json.encode(
                    [BatchError(code="file_not_found", message="the input file is gone")]
                ).decode(),
            )

    async def _start_lines(self, row: Any, lines: list[Line]) -> None:
        now = time.time()
        rows = [
            {
                "id": new_id("task_"),
                "owner": row.owner,
                "kind": row.kind,
                "target": line.target,
                "payload": msgspec.json.encode(line.body).decode(),
                "state": "queued",
                "priority": row.priority,
                "max_attempts": self.settings.max_attempts,
                "created_at": now,
                "batch_id": row.id,
                "line": line.number,
                "custom_id": line.custom_id,
            }
            for line in lines
        ]
        async with self.db.engine.begin() as conn:
            await conn.execute(tasks.insert(), rows)
            await conn.execute(
                batches.update()
                .where(batches.c.id == row.id, batches.c.status == "validating")
                .values(status="in_progress", in_progress_at=now, total=len(rows))
            )
        log.info("batch.in_progress", batch=row.id, lines=len(rows))
        self.queue.wake()

    async def lines_ended(self, batch_ids: set[str]) -> None:
        """Called after results are written: a batch with no line left to run is finalized."""
        counts = await self.store.counts_of(list(batch_ids))
        for batch_id in batch_ids:
            if not counts.get(batch_id, {}).keys() & {"queued", "running"}:
                await self._finalize(batch_id)

    async def tick(self) -> None:
        """On the queue's tick: expire batches past their window, and pick up what a stopped process left."""
        now = time.time()
        async with self.db.engine.connect() as conn:
            active = (await conn.execute(sa.select(batches).where(batches.c.status.in_(ACTIVE_BATCH)))).all()
        running: set[str] = set()
        for row in active:
            if row.id in self._busy:
                continue
            if row.status == "validating":
                await self._validate(row.id)
            elif row.status == "in_progress" and now >= row.expires_at:
                log.info("batch.expiring", batch=row.id)
                await self._end_lines(row.id, row.owner, "expired")
                await self._finalize(row.id, expired=True)
            elif row.status in ("cancelling", "finalizing"):
                if row.status == "cancelling":
                    await self._end_lines(row.id, row.owner, "cancelled")
                await self._finalize(row.id)
            elif row.status == "in_progress":
                running.add(row.id)
        if running:  # one whose lines all ended before a stop, its finalizing not done
            await self.lines_ended(running)
        if now - self._swept >= SWEEP_EVERY_S:
            self._swept = now
            await self.sweep()

    async def _end_lines(self, batch_id: str, owner: str, state: str) -> None:
        await self.queue.flush()  # lines that have finished keep their results
        async with self.db.engine.connect() as conn:
            query = sa.select(tasks.c.id).where(tasks.c.batch_id == batch_id, tasks.c.state == "running")
            running = [i for (i,) in (await conn.execute(query)).all()]
        await self.store.end_open(state, batch_id=batch_id, owner=owner)
        self.queue.abort(running)

    async def _finalize(self, batch_id: str, *, expired: bool = False) -> None:
        if batch_id in self._busy:
            return
        self._busy.add(batch_id)
        try:
            async with self.db.exclusive(f"batch:{batch_id}") as mine:
                if mine:  # else another instance is finalizing it
                    await self._finalize_mine(batch_id, expired)
        finally:
            self._busy.discard(batch_id)

    async def _finalize_mine(self, batch_id: str, expired: bool) -> None:
        row = await self._row(batch_id)
        if row.status not in ("in_progress", "cancelling", "finalizing"):
            return
        final = "expired" if expired else ("cancelled" if row.status == "cancelling" else "completed")
        if row.status == "in_progress" and final == "completed":
            await self._set(batch_id, "finalizing", finalizing_at=time.time())
        async with self.db.engine.connect() as conn:
            query = (
                sa.select(tasks.c.id, tasks.c.custom_id, tasks.c.state, tasks.c.result, tasks.c.error)
                .where(tasks.c.batch_id == batch_id)
                .order_by(tasks.c.line)
            )
            lines = (await conn.execute(query)).all()
        output, errors, usage = output_lines(lines)
        now = time.time()
        async with self.db.engine.begin() as conn:
            values: dict[str, Any] = {"status": final, f"{final}_at": now, "usage": usage}
            if output:
                out = await self.files.write(
                    output, f"{batch_id}_output.jsonl", "batch_output", row.owner, conn, row.output_expires_s
                )
                values["output_file_id"] = out.id
            if errors:
                err = await self.files.write(
                    errors, f"{batch_id}_error.jsonl", "batch_output", row.owner, conn, row.output_expires_s
                )
                values["error_file_id"] = err.id
            await conn.execute(batches.update().where(batches.c.id == batch_id).values(**values))
        log.info(f"batch.{final}", batch=batch_id, lines=len(lines), output=len(output), errors=len(errors))

    async def sweep(self) -> None:
        """Retention: files, finished tasks and ended batches older than `tasks.retention_days` go."""
        before = time.time() - self.settings.retention_days * 86400
        ended = sa.func.coalesce(
            batches.c.completed_at, batches.c.failed_at, batches.c.expired_at, batches.c.cancelled_at
        )
        async with self.db.engine.begin() as conn:
            gone = await conn.execute(batches.delete().where(batches.c.status.not_in(ACTIVE_BATCH), ended < before))
        files = await self.files.sweep()
        task_rows = await self.store.delete_finished(before)
        if files or task_rows or gone.rowcount:
            log.info("tasks.retention", files=files, tasks=task_rows, batches=gone.rowcount)

    # -- rows

    async def _row(self, batch_id: str) -> Any:
        async with self.db.engine.connect() as conn:
            return (await conn.execute(sa.select(batches).where(batches.c.id == batch_id))).one()

    async def _set(self, batch_id: str, status: str, **values: Any) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(batches.update().where(batches.c.id == batch_id).values(status=status, **values))


def _to_batch(row: Any, counts: dict[str, int]) -> Batch:
    errors = msgspec.json.decode(row.errors, type=list[BatchError]) if row.errors else None
    return Batch(
        id=row.id,
        endpoint=row.endpoint,
        errors=BatchErrors(data=errors) if errors else None,
        input_file_id=row.input_file_id,
        completion_window=row.completion_window,
        status=row.status,
        output_file_id=row.output_file_id,
        error_file_id=row.error_file_id,
        created_at=int(row.created_at),
        in_progress_at=_ts(row.in_progress_at),
        expires_at=_ts(row.expires_at),
        finalizing_at=_ts(row.finalizing_at),
        completed_at=_ts(row.completed_at),
        failed_at=_ts(row.failed_at),
        expired_at=_ts(row.expired_at),
        cancelling_at=_ts(row.cancelling_at),
        cancelled_at=_ts(row.cancelled_at),
        request_counts=RequestCounts(
            total=row.total, completed=counts.get("succeeded", 0), failed=counts.get("failed", 0)
        ),
        metadata=msgspec.json.decode(row.metadata) if row.metadata else None,
        usage=msgspec.json.decode(row.usage, type=BatchUsage) if row.usage else None,
    )
