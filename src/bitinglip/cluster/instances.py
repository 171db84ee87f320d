"""Instances on one database know each other: each writes its row (its URL and what it serves) at start, renews
it every `cluster.heartbeat_s`, and removes it on a clean stop. A row not renewed for three beats is a dead
instance's: it is left out of `live()` and deleted a while later by whichever instance beats next.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa

from bitinglip.cluster.status import DeploymentStatus
from bitinglip.cluster.tables import instances
from bitinglip.core import Database, get_logger

log = get_logger(__name__)

MISSED_BEATS = 3  # a row this many beats old is a dead instance's
SERVING_STATES = frozenset({"loading", "ready", "sleeping"})  # a deployment in these states takes requests
FORGET_AFTER_S = 3600.0  # and deleted once it is this old


class InstanceDeployment(msgspec.Struct):
    name: str
    model: str
    state: str
    adapters: list[str]


class Instance(msgspec.Struct, kw_only=True):
    id: str
    url: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    deployments: list[InstanceDeployment]
    this: bool  # the instance that answered


def summarize(deployments: list[DeploymentStatus]) -> list[InstanceDeployment]:
    """What the other instances need to know of this one's deployments."""
    return [InstanceDeployment(d.name, d.model, d.state, d.adapters) for d in deployments]


def serving_elsewhere(live: list[Instance]) -> dict[str, list[str]]:
    """The names the other instances take requests for (their deployments' and those deployments' adapters), each
    with the URLs of the instances that serve it."""
    urls: dict[str, list[str]] = {}
    for instance in live:
        if instance.this:
            continue
        for d in instance.deployments:
            if d.state in SERVING_STATES:
                for name in {d.name, *d.adapters}:
                    urls.setdefault(name, []).append(instance.url)
    return urls


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Instances:
    def __init__(
        self, db: Database, url: str, deployments: Callable[[], list[InstanceDeployment]], *, heartbeat_s: float
    ) -> None:
        self.db = db
        self.url = url
        self.id = instance_id()
        # Signs the requests this instance forwards (gateway/vouch.py); in its row for the others, never shown.
        self.secret = secrets.token_hex(32)
        self.heartbeat_s = heartbeat_s
        self._deployments = deployments
        self._started_at = 0.0
        self._beat: asyncio.Task[None] | None = None
        # What the other live instances take requests for (deployment and adapter names) and their URLs, as of this
        # instance's last beat: the forwarder and the task queue read it, never the table, on a request's path.
        self.serving_urls: dict[str, list[str]] = {}
        self.peer_secrets: dict[str, bytes] = {}  # the other live instances' secrets, by id, as of the last beat

    @property
    def elsewhere(self) -> frozenset[str]:
        return frozenset(self.serving_urls)

    def _values(self, now: float) -> dict[str, object]:
        mine = msgspec.json.encode(self._deployments()).decode()
        return {"url": self.url, "heartbeat_at": now, "deployments": mine}

    def _row(self, now: float) -> dict[str, object]:
        fixed = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started_at,
            "secret": self.secret,
        }
        return fixed | self._values(now)

    async def start(self) -> None:
        self._started_at = now = time.time()
        async with self.db.engine.begin() as conn:
            await conn.execute(instances.insert().values(**self._row(now)))
        log.info("instance.registered", instance=self.id, url=self.url)
        await self._look_around()
        self._beat = asyncio.get_running_loop().create_task(self._beat_loop(), name="instance-heartbeat")

    async def beat(self) -> None:
        """Renew this row (re-made if another instance took it for dead) and forget long-dead instances."""
        now = time.time()
        async with self.db.engine.begin() as conn:
            updated = await conn.execute(
                instances.update().where(instances.c.id == self.id).values(**self._values(now))
            )
            if updated.rowcount == 0:
                await conn.execute(instances.insert().values(**self._row(now)))
            await conn.execute(instances.delete().where(instances.c.heartbeat_at < now - FORGET_AFTER_S))
        await self._look_around()

    async def _look_around(self) -> None:
        rows = await self._live_rows()
        self.serving_urls = serving_elsewhere(self._instances(rows))
        self.peer_secrets = {r.id: r.secret.encode() for r in rows if r.id != self.id and r.secret}

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.beat()
            except Exception as exc:  # the database is away: the next beat tries again
                log.warning("instance.heartbeat_failed", error=f"{type(exc).__name__}: {exc}")

    async def live(self) -> list[Instance]:
        """Every instance whose heartbeat is fresh, this one first, then by when they started."""
        return self._instances(await self._live_rows())

    async def _live_rows(self) -> list[sa.Row[Any]]:
        since = time.time() - MISSED_BEATS * self.heartbeat_s
        query = sa.select(instances).where(instances.c.heartbeat_at >= since).order_by(instances.c.started_at)
        async with self.db.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    def _instances(self, rows: list[sa.Row[Any]]) -> list[Instance]:
        found = [
            Instance(
                id=r.id,
                url=r.url,
                host=r.host,
                pid=r.pid,
                started_at=r.started_at,
                heartbeat_at=r.heartbeat_at,
                deployments=msgspec.json.decode(r.deployments, type=list[InstanceDeployment]),
                this=r.id == self.id,
            )
            for r in rows
        ]
        return sorted(found, key=lambda i: not i.this)

    async def live_ids(self) -> set[str]:
        return {i.id for i in await self.live()}

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
            self._beat = None
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(instances.delete().where(instances.c.id == self.id))
        except Exception as exc:  # stopping anyway: the row ages out
            log.warning("instance.unregister_failed", error=f"{type(exc).__name__}: {exc}")


def advertised_url(host: str, port: int, configured: str = "") -> str:
    """`server.advertise_url`, or the address the server listens on (this machine's name for 0.0.0.0 and ::)."""
    if configured:
        return configured.rstrip("/")
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
