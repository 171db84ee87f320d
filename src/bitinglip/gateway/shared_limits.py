"""Limits exact across every instance on one PostgreSQL database: the same rules as `MemoryLimitStore` (a request
reserves prompt + max_tokens in each of its buckets, admitted only if all have room in the 60 s ending now,
settled on its real count when it ends), kept in table `limit_holds` instead of one process's memory.

Admission is one transaction that locks the request's buckets (advisory locks, taken in name order so that two
requests never wait on each other in a cycle), counts them and adds the request's rows; another instance admitting
to the same bucket waits for that transaction, so no window ever holds more than the limit. Settling is written
behind the request (a slot is free once that write commits). An instance that dies with requests in flight has
them ended by the next sweep of a live one, after it misses three heartbeats.

Only limited buckets come here: a request whose key and model have no limits never touches the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa

from bitinglip.core import Database, get_logger
from bitinglip.gateway.limits import WINDOW_S, Bucket, Reservation, Snapshot, at_once, refuse, too_large
from bitinglip.gateway.tables import limit_holds

log = get_logger(__name__)

SWEEP_EVERY_S = 10.0


class SharedHold:
    __slots__ = ("id", "settled", "tokens")

    def __init__(self, hold_id: str, tokens: int) -> None:
        self.id = hold_id
        self.tokens = tokens
        self.settled = False


class SharedLimitStore:
    def __init__(self, db: Database, instance_id: str, live_ids: Callable[[], Awaitable[set[str]]]) -> None:
        self.db = db
        self.instance_id = instance_id
        self.live_ids = live_ids
        self._seen: dict[str, Snapshot] = {}  # each bucket as this instance last counted it: the response headers
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def check(self, buckets: Sequence[Bucket]) -> None:
        """Nothing to refuse early: the counts are in the database, and `reserve` reads them exactly."""

    async def reserve(self, buckets: Sequence[Bucket], tokens: int) -> SharedHold:
        now = time.time()
        start = now - WINDOW_S
        names = sorted({b.name for b in buckets})
        hold = SharedHold(uuid.uuid4().hex, tokens)
        live = limit_holds.c.at > start
        query = (
            sa.select(
                limit_holds.c.bucket,
                sa.func.count().filter(live),
                sa.func.coalesce(sa.func.sum(limit_holds.c.tokens).filter(live), 0),
                sa.func.count().filter(sa.not_(limit_holds.c.done)),
                sa.func.min(limit_holds.c.at).filter(live),
            )
            .where(limit_holds.c.bucket.in_(names), sa.or_(live, sa.not_(limit_holds.c.done)))
            .group_by(limit_holds.c.bucket)
        )
        async with self.db.engine.begin() as conn:
            for name in names:
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(name, 0))))
            counts = {row[0]: tuple(row[1:]) for row in (await conn.execute(query)).all()}
            for bucket in buckets:
                self._fits(bucket, counts.get(bucket.name, (0, 0, 0, None)), tokens, now)
            rows = [
                {"id": hold.id, "bucket": n, "at": now, "tokens": tokens, "done": False, "instance": self.instance_id}
                for n in names
            ]
            await conn.execute(limit_holds.insert(), rows)
        for bucket in buckets:
            requests, used, _, oldest = counts.get(bucket.name, (0, 0, 0, None))
            rpm, tpm, _ = bucket.limits
            self._seen[bucket.name] = Snapshot(
                requests_left=max(0, rpm - requests - 1) if rpm is not None else 0,
                tokens_left=max(0, tpm - used - tokens) if tpm is not None else 0,
                reset_s=(oldest if oldest is not None else now) + WINDOW_S - now,
            )
        return hold

    @staticmethod
    def _fits(bucket: Bucket, counts: tuple[Any, ...], tokens: int, now: float) -> None:
        requests, used, in_flight, oldest = counts
        rpm, tpm, concurrent = bucket.limits
        reset = (oldest if oldest is not None else now) + WINDOW_S - now
        if concurrent is not None and in_flight >= concurrent:
            raise at_once(bucket, concurrent)
        if rpm is not None and requests >= rpm:
            raise refuse(bucket, "requests per minute", rpm, reset)
        if tpm is not None:
            if tokens > tpm:
                raise too_large(bucket, tokens, tpm)
            if used + max(tokens, 1) > tpm:
                # The oldest entry leaving may not free enough: the client is told the soonest it could fit.
                raise refuse(bucket, "tokens per minute", tpm, max(reset, 1.0))

    def settle(self, reservation: Reservation, tokens: int) -> None:
        assert isinstance(reservation, SharedHold)
        if reservation.settled:
            return
        reservation.settled = True
        # A reservation never grows: admitted requests stay admitted.
        self._pending.append({"hold": reservation.id, "used": min(tokens, reservation.tokens)})
        self._wake.set()

    def snapshot(self, bucket: Bucket) -> Snapshot:
        seen = self._seen.get(bucket.name)
        if seen is not None:
            return seen
        rpm, tpm, _ = bucket.limits
        return Snapshot(requests_left=rpm or 0, tokens_left=tpm or 0, reset_s=0.0)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_loop()), loop.create_task(self._sweep_loop())]

    async def flush(self) -> None:
        """Write the settlements gathered so far (kept for the next try if the database is away)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        update = (
            sa.update(limit_holds)
            .where(limit_holds.c.id == sa.bindparam("hold"))
            .values(tokens=sa.bindparam("used"), done=True)
        )
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(update, batch)
        except Exception:
            self._pending[:0] = batch
            raise

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                log.warning("limits.settle_failed", error=f"{type(exc).__name__}: {exc}", pending=len(self._pending))
                await asyncio.sleep(1.0)
                self._wake.set()

    async def sweep(self) -> None:
        """Forget what left the window, and end the requests of instances that are gone."""
        now = time.time()
        live = await self.live_ids()
        async with self.db.engine.begin() as conn:
            await conn.execute(limit_holds.delete().where(limit_holds.c.done, limit_holds.c.at <= now - WINDOW_S))
            if self.instance_id in live:  # never judge the others from a list that misses this one
                lost = sa.not_(limit_holds.c.done), limit_holds.c.instance.not_in(live)
                await conn.execute(sa.update(limit_holds).where(*lost).values(done=True))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("limits.sweep_failed", error=f"{type(exc).__name__}: {exc}")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.flush()
