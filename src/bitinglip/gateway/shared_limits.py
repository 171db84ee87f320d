"""Limits exact across every instance on one PostgreSQL database: the same rules as `MemoryLimitStore` (a request
reserves prompt + max_tokens in each of its buckets, admitted only if all have room in the 60 s ending now,
settled on its real count when it ends), kept in table `limit_holds` instead of one process's memory.

Admission is one call of the database function `bitinglip_reserve` (one round trip): it locks the request's
buckets (advisory locks, taken in name order so that two requests never wait on each other in a cycle), counts
them and adds the request's rows; another instance admitting to the same bucket waits for that call, so no window
ever holds more than the limit. Settling is written behind the request (a slot is free once that write commits).
An instance that dies with requests in flight has them ended by the next sweep of a live one, after it misses
three heartbeats.

Only limited buckets come here: a request whose key and model have no limits never touches the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import sqlalchemy as sa

from bitinglip.core import Database, get_logger
from bitinglip.gateway.limits import WINDOW_S, Bucket, Reservation, Snapshot, at_once, refuse, too_large
from bitinglip.gateway.tables import limit_holds

log = get_logger(__name__)

SWEEP_EVERY_S = 10.0
# bitinglip_reserve: the admission in one round trip (core/migrations/versions/0002_scale_out.py).
_RESERVE = "SELECT * FROM bitinglip_reserve($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5, $6, $7, $8)"
_SETTLE = "UPDATE limit_holds SET tokens = $2, done = true WHERE id = $1"


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
        # Each bucket as this instance last counted it, for the response headers, with what orders the counts.
        self._seen: dict[str, tuple[Any, int, Snapshot]] = {}
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: asyncpg.Pool | None = None

    def check(self, buckets: Sequence[Bucket]) -> None:
        """Nothing to refuse early: the counts are in the database, and `reserve` reads them exactly."""

    async def reserve(self, buckets: Sequence[Bucket], tokens: int) -> SharedHold:
        now = time.time()
        ordered = sorted(buckets, key=lambda b: b.name)
        hold = SharedHold(uuid.uuid4().hex, tokens)
        pool = self._pool or await self._open()
        rows = await pool.fetch(
            _RESERVE,
            [b.name for b in ordered],
            [b.limits.rpm for b in ordered],
            [b.limits.tpm for b in ordered],
            [b.limits.max_concurrent for b in ordered],
            tokens,
            hold.id,
            self.instance_id,
            now,
        )
        for bucket, row in zip(ordered, rows, strict=False):
            counts = (row["requests"], row["used"], row["in_flight"], row["oldest"])
            if row["refused"]:
                self._fits(bucket, counts, tokens, now)
                raise refuse(bucket, "requests", 0, WINDOW_S)  # not reached: the function and _fits agree
            rpm, tpm, _ = bucket.limits
            requests, used, _, oldest = counts
            seen = self._seen.get(bucket.name)
            if seen is not None and seen[0] == oldest and seen[1] > requests:
                # Answers on several connections arrive in any order: with the same oldest entry nothing left the
                # window between the two counts, so the smaller one was taken first and is not the bucket now.
                continue
            self._seen[bucket.name] = (
                oldest,
                requests,
                Snapshot(
                    requests_left=max(0, rpm - requests - 1) if rpm is not None else 0,
                    tokens_left=max(0, tpm - used - tokens) if tpm is not None else 0,
                    reset_s=(oldest if oldest is not None else now) + WINDOW_S - now,
                ),
            )
        return hold

    async def _open(self) -> asyncpg.Pool:
        """A few connections of this store's own, on asyncpg directly: admission is on every limited request's
        path, and one prepared statement there costs a fraction of going through SQLAlchemy."""
        if self._pool is None:
            dsn = sa.engine.make_url(self.db.url).set(drivername="postgresql").render_as_string(hide_password=False)
            self._pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
        return self._pool

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
            return seen[2]
        rpm, tpm, _ = bucket.limits
        return Snapshot(requests_left=rpm or 0, tokens_left=tpm or 0, reset_s=0.0)

    async def start(self) -> None:
        await self._open()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_loop()), loop.create_task(self._sweep_loop())]

    async def flush(self) -> None:
        """Write the settlements gathered so far (kept for the next try if the database is away)."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            pool = self._pool or await self._open()
            await pool.executemany(_SETTLE, [(p["hold"], p["used"]) for p in batch])
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
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
