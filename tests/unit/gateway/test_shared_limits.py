"""Limits shared by the instances on one PostgreSQL database: exact across them, as one process is alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bitinglip.core import Database, DbSettings, RateLimited
from bitinglip.gateway import SharedLimitStore
from bitinglip.gateway.limits import Bucket, Limits


class Instance:
    def __init__(self, db: Database, name: str, live: set[str]) -> None:
        async def live_ids() -> set[str]:
            return live

        self.db = db
        self.store = SharedLimitStore(db, name, live_ids)


@pytest.fixture
async def instances(postgres_server: Any) -> AsyncIterator[list[Instance]]:
    url = postgres_server.new_url()
    live = {"a", "b"}
    made = []
    for name in ("a", "b"):
        db = Database(DbSettings(url=url))
        await db.start()
        made.append(Instance(db, name, live))
    for i in made:
        await i.store.start()
    yield made
    for i in made:
        await i.store.stop()
        await i.db.stop()


async def admitted(store: SharedLimitStore, bucket: Bucket, tokens: int = 1) -> bool:
    try:
        await store.reserve([bucket], tokens)
    except RateLimited:
        return False
    return True


async def test_requests_per_minute_hold_across_instances_even_at_once(instances: list[Instance]) -> None:
    a, b = (i.store for i in instances)
    for key in range(5):  # answers come back in any order: each round is another chance to show the wrong count
        bucket = Bucket(f"key k{key}", Limits(rpm=10))
        results = await asyncio.gather(*(admitted(a if n % 2 else b, bucket) for n in range(20)))
        assert sum(results) == 10  # 20 at once over two instances: exactly the limit
        with pytest.raises(RateLimited) as refused:
            await b.reserve([bucket], 1)
        assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= 60
        # The instance that admitted the tenth shows none left, whichever of its answers arrived last.
        assert a.snapshot(bucket).requests_left == 0 or b.snapshot(bucket).requests_left == 0
    assert await admitted(a, Bucket("key other", Limits(rpm=10)))  # another key has its own


async def test_requests_at_once_hold_across_instances_and_free_when_one_settles(instances: list[Instance]) -> None:
    bucket = Bucket("key k1", Limits(max_concurrent=2))
    a, b = (i.store for i in instances)
    first = await a.reserve([bucket], 1)
    await b.reserve([bucket], 1)
    with pytest.raises(RateLimited, match="2 requests at once"):
        await b.reserve([bucket], 1)
    a.settle(first, 1)
    await a.flush()
    assert await admitted(b, bucket)


async def test_tokens_per_minute_count_the_reservation_then_what_was_used(instances: list[Instance]) -> None:
    bucket = Bucket("key k1", Limits(tpm=1000))
    a, b = (i.store for i in instances)
    first = await a.reserve([bucket], 600)  # prompt 100 + max_tokens 500
    with pytest.raises(RateLimited, match="tokens per minute"):
        await b.reserve([bucket], 600)  # 1,200 might be used: refused while the first runs
    a.settle(first, 150)  # it used 150
    await a.flush()
    assert await admitted(b, bucket, 600)  # 750 fits
    with pytest.raises(RateLimited, match="request too large"):
        await a.reserve([bucket], 1001)


async def test_a_request_touching_a_full_bucket_takes_nothing_from_the_others(instances: list[Instance]) -> None:
    key, model = Bucket("key k1", Limits(rpm=5)), Bucket("model m", Limits(rpm=1))
    a, b = (i.store for i in instances)
    await a.reserve([key, model], 1)
    with pytest.raises(RateLimited, match="model m"):
        await b.reserve([key, model], 1)
    for _ in range(4):  # the refused request took none of the key's five
        await b.reserve([key], 1)
    assert not await admitted(a, key)


async def test_a_dead_instances_requests_in_flight_end_at_the_next_sweep(instances: list[Instance]) -> None:
    bucket = Bucket("key k1", Limits(max_concurrent=1))
    a, b = instances
    await b.store.reserve([bucket], 1)  # b dies with it in flight: it never settles
    assert not await admitted(a.store, bucket)
    dead_b = SharedLimitStore(a.db, "a", live_ids=_only_a)  # a's sweep, with b gone from the instances
    await dead_b.sweep()
    assert await admitted(a.store, bucket)


async def _only_a() -> set[str]:
    return {"a"}
