"""Cluster routes: `GET /api/cluster` (devices and engines) and `GET /ready`. Thin: they read the Cluster."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from bitinglip.cluster.cluster import Cluster, EngineState, EngineStatus
from bitinglip.cluster.devices import Device, list_devices


class ClusterStatus(msgspec.Struct):
    devices: list[Device]
    engines: list[EngineStatus]


class EngineReadiness(msgspec.Struct):
    model: str
    state: EngineState
    error: str | None


class Readiness(msgspec.Struct):
    ready: bool
    engines: list[EngineReadiness]


class ClusterController(Controller):
    tags = ("cluster",)

    @get("/api/cluster", operation_id="getClusterStatus", summary="Devices, engines and their load")
    async def status(self, cluster: NamedDependency[Cluster]) -> ClusterStatus:
        devices = await asyncio.to_thread(list_devices)  # NVML calls block
        return ClusterStatus(devices=devices, engines=cluster.status())

    @get(
        "/ready",
        operation_id="getReadiness",
        summary="200 once the engine has answered a warm-up request, 503 (with Retry-After) until then",
        responses={
            503: ResponseSpec(Readiness, description="Not ready yet, stalled or failed", generate_examples=False)
        },
    )
    async def ready(self, cluster: NamedDependency[Cluster]) -> Response[Readiness]:
        body = Readiness(
            ready=cluster.ready,
            engines=[EngineReadiness(model=s.model, state=s.state, error=s.error) for s in cluster.status()],
        )
        if cluster.ready:
            return Response(body)
        return Response(body, status_code=503, headers={"Retry-After": "5"})
