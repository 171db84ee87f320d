"""Usage per key, model and UTC day: counted in memory on the request path, written in batches.

A request only adds to a counter in a dict. Every `gateway.usage_flush_s` the counters are swapped out and
added to their rows in one transaction (an upsert per row); a clean stop writes what is left, so a kill -9
loses at most one interval. A write that fails puts its counters back to be added to the next one: memory
holds one counter per (day, key, model) whatever the number of requests, and past `MAX_CELLS` distinct
counters waiting the oldest are dropped, counted and logged, never kept without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, date, datetime

import msgspec
import sqlalchemy as sa

from bitinglip.core import Database, get_logger
from bitinglip.gateway.tables import usage

log = get_logger(__name__)

MAX_CELLS = 100_000
Cell = tuple[str, str, str]  # (day, key id, model)


class UsageRow(msgspec.Struct, kw_only=True):
    day: str
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int


class UsageReport(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[UsageRow]
    total: UsageRow  # summed over the rows; its day, key_id and model are "*"


def today() -> str:
    return datetime.now(UTC).date().isoformat()


class UsageRecorder:
    def __init__(self, db: Database, flush_s: float = 2.0) -> None:
        self.db = db
        self.flush_s = flush_s
        self.pending: dict[Cell, list[int]] = {}  # [requests, prompt tokens, completion tokens, errors]
        self.dropped = 0
        self.failed_writes = 0
        self._loop: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, key_id: str, model: str, prompt_tokens: int, completion_tokens: int, error: bool) -> None:
        cell = (today(), key_id, model)
        counts = self.pending.get(cell)
        if counts is None:
            if len(self.pending) >= MAX_CELLS:
                self._drop_oldest()
            counts = self.pending[cell] = [0, 0, 0, 0]
        counts[0] += 1
        counts[1] += prompt_tokens
        counts[2] += completion_tokens
        counts[3] += error

    def _drop_oldest(self) -> None:
        oldest = next(iter(self.pending))
        self.dropped += self.pending.pop(oldest)[0]
        log.error("usage.dropped", reason="too many counters waiting for the database", dropped=self.dropped)

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._flush_loop(), name="usage-flush")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        await self.flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()

    async def flush(self) -> None:
        """Write the counters gathered so far; on failure keep them for the next flush."""
        async with self._lock:
            if not self.pending:
                return
            batch, self.pending = self.pending, {}
            try:
                async with self.db.engine.begin() as conn:
                    # In key order: two instances adding to the same rows at once lock them in the same order
                    # (PostgreSQL), so neither waits on the other forever.
                    for (day, key_id, model), (requests, prompt, completion, errors) in sorted(batch.items()):
                        statement = self.db.upsert(usage).values(
                            day=day,
                            key_id=key_id,
                            model=model,
                            requests=requests,
                            prompt_tokens=prompt,
                            completion_tokens=completion,
                            errors=errors,
                        )
                        await conn.execute(
                            statement.on_conflict_do_update(
                                index_elements=[usage.c.day, usage.c.key_id, usage.c.model],
                                set_={
                                    "requests": usage.c.requests + statement.excluded.requests,
                                    "prompt_tokens": usage.c.prompt_tokens + statement.excluded.prompt_tokens,
                                    "completion_tokens": usage.c.completion_tokens
                                    + statement.excluded.completion_tokens,
                                    "errors": usage.c.errors + statement.excluded.errors,
                                },
                            )
                        )
            except Exception as exc:  # the database is locked, full, gone: keep counting, try again next time
                self.failed_writes += 1
                log.warning("usage.write_failed", error=f"{type(exc).__name__}: {exc}", counters=len(batch))
                for cell, counts in batch.items():  # merged back: one counter per cell, never one per request
                    into = self.pending.setdefault(cell, [0, 0, 0, 0])
                    for i, value in enumerate(counts):
                        into[i] += value
                while len(self.pending) > MAX_CELLS:
                    self._drop_oldest()

    async def report(
        self, *, key_id: str | None = None, model: str | None = None, start: date | None = None, end: date | None = None
    ) -> UsageReport:
        """Rows by day, key and model (newest day first), filtered; what is counted but not yet written is
        written first, so a report never lags the requests it describes."""
        await self.flush()
        query = sa.select(usage).order_by(usage.c.day.desc(), usage.c.key_id, usage.c.model)
        if key_id is not None:
            query = query.where(usage.c.key_id == key_id)
        if model is not None:
            query = query.where(usage.c.model == model)
        if start is not None:
            query = query.where(usage.c.day >= start.isoformat())
        if end is not None:
            query = query.where(usage.c.day <= end.isoformat())
        async with self.db.engine.connect() as conn:
            rows = [UsageRow(**dict(row._mapping)) for row in await conn.execute(query)]
        total = UsageRow(
            day="*",
            key_id="*",
            model="*",
            requests=sum(r.requests for r in rows),
            prompt_tokens=sum(r.prompt_tokens for r in rows),
            completion_tokens=sum(r.completion_tokens for r in rows),
            errors=sum(r.errors for r in rows),
        )
        return UsageReport(data=rows, total=total)
