"""Instances on one database: each registers its URL and deployments, sees the others while their heartbeats
are fresh, and leaves on a clean stop; a silent one drops out of the list."""

from __future__ import annotations

import time

import sqlalchemy as sa

from bitinglip.cluster import InstanceDeployment, Instances, advertised_url
from bitinglip.cluster.tables import instances as table
from bitinglip.core import Database, DbSettings


def serving(*models: str) -> list[InstanceDeployment]:
    return [InstanceDeployment(name=m, model=m, state="ready", adapters=[]) for m in models]


async def test_instances_see_each_other_and_a_silent_one_drops_out(db_url: str) -> None:
    dbs = [Database(DbSettings(url=db_url)) for _ in range(2)]
    for db in dbs:
        await db.start()
    a = Instances(dbs[0], "http://a:8000", lambda: serving("tiny"), heartbeat_s=0.5)
    b = Instances(dbs[1], "http://b:8000", lambda: serving("other"), heartbeat_s=0.5)
    try:
        await a.start()
        await b.start()
        assert a.elsewhere == frozenset() and b.elsewhere == {"tiny"}  # a looked before b was there
        await a.beat()
        assert a.elsewhere == {"other"}  # what the others serve, as of this instance's last beat
        seen = await a.live()
        assert [(i.url, i.this) for i in seen] == [("http://a:8000", True), ("http://b:8000", False)]
        assert [d.name for d in seen[1].deployments] == ["other"]
        assert [i.url for i in await b.live()] == ["http://b:8000", "http://a:8000"]

        # b goes silent (a kill -9 sends no goodbye): three missed beats and a no longer lists it
        async with dbs[0].engine.begin() as conn:
            await conn.execute(table.update().where(table.c.id == b.id).values(heartbeat_at=time.time() - 60))
        assert [i.url for i in await a.live()] == ["http://a:8000"]
        await b.beat()  # it was only slow: its next beat brings it back
        assert len(await a.live()) == 2

        await b.stop()  # a clean stop removes its row at once
        assert [i.url for i in await a.live()] == ["http://a:8000"]
        async with dbs[0].engine.begin() as conn:
            await conn.execute(table.delete())  # taken for long dead and forgotten: the next beat writes it again
        await a.beat()
        assert [i.url for i in await a.live()] == ["http://a:8000"]
    finally:
        await a.stop()
        for db in dbs:
            await db.stop()
    check = Database(DbSettings(url=db_url))
    await check.start()
    async with check.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() == 0
    await check.stop()


def test_the_advertised_url_names_this_machine_for_an_address_that_listens_everywhere() -> None:
    import socket

    assert advertised_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert advertised_url("0.0.0.0", 9000) == f"http://{socket.getfqdn()}:9000"
    assert advertised_url("::1", 8000) == "http://[::1]:8000"
    assert advertised_url("0.0.0.0", 8000, "https://bl-2.internal/") == "https://bl-2.internal"
