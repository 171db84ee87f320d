"""Mounts the cluster: starts the engine after the database, stops it before; admin routes under /api/cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Response, get
from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin

from bitinglip.cluster.cluster import Cluster
from bitinglip.cluster.devices import list_devices


def cluster_routes(cluster: Cluster) -> list[Any]:
    @get("/api/cluster", operation_id="clusterStatus")
    async def status() -> Response[bytes]:
        devices = await asyncio.to_thread(list_devices)
        body = {"devices": devices, "engines": cluster.status()}
        return Response(content=msgspec.json.encode(body), media_type="application/json")

    return [status]


class ClusterPlugin(InitPlugin):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        @asynccontextmanager
        async def lifespan(_app: Any) -> AsyncIterator[None]:
            await self.cluster.start()
            try:
                yield
            finally:
                await self.cluster.stop()

        app_config.lifespan.append(lifespan)
        app_config.route_handlers.extend(cluster_routes(self.cluster))
        return app_config
