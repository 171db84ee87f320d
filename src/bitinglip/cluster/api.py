"""Cluster routes: devices, deployments, and `GET /ready`. Thin: parse, call the Cluster, return."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from bitinglip.cluster.cluster import Cluster
from bitinglip.cluster.devices import Device, list_devices
from bitinglip.cluster.instances import Instance, Instances
from bitinglip.cluster.ray_nodes import RayCluster, RayView
from bitinglip.cluster.status import DeploymentStatus, Readiness, deployment_status
from bitinglip.core import DeploymentSettings, error_responses


class ClusterStatus(msgspec.Struct):
    devices: list[Device]
    deployments: list[DeploymentStatus]
    # Every live instance on this database (this one first) and what each serves: one with SQLite.
    instances: list[Instance]
    # The Ray cluster's nodes when `cluster.executor = "ray"`; null otherwise.
    ray: RayCluster | None = None


class InstanceList(msgspec.Struct):
    data: list[Instance]


class DeploymentList(msgspec.Struct):
    data: list[DeploymentStatus]


class ClusterController(Controller):
    tags = ("cluster",)

    @get("/api/cluster", operation_id="getClusterStatus", summary="Devices and deployments with their load")
    async def status(
        self,
        cluster: NamedDependency[Cluster],
        instances: NamedDependency[Instances],
        ray_view: NamedDependency[RayView | None],
    ) -> ClusterStatus:
        devices = await asyncio.to_thread(cluster.probe_devices)  # NVML calls block
        ray = await ray_view.cluster() if ray_view is not None else None
        return ClusterStatus(devices=devices, deployments=cluster.status(), instances=await instances.live(), ray=ray)

    @get(
        "/api/cluster/instances",
        operation_id="listInstances",
        summary="Every live BitingLip instance on this database (this one first) and its deployments",
    )
    async def list_instances(self, instances: NamedDependency[Instances]) -> InstanceList:
        return InstanceList(data=await instances.live())

    @get("/api/cluster/devices", operation_id="listDevices", summary="GPUs (NVML) and the CPU, with free memory")
    async def devices(self) -> list[Device]:
        return await asyncio.to_thread(list_devices)

    @get("/api/deployments", operation_id="listDeployments", summary="Every deployment, its state, memory and load")
    async def list_deployments(self, cluster: NamedDependency[Cluster]) -> DeploymentList:
        return DeploymentList(data=cluster.status())

    @get(
        "/api/deployments/{name:path}",
        operation_id="getDeployment",
        summary="One deployment",
        responses=error_responses(404),
    )
    async def get_deployment(self, cluster: NamedDependency[Cluster], name: FromPath[str]) -> DeploymentStatus:
        return deployment_status(cluster.get(name.lstrip("/")))

    @post(
        "/api/deployments",
        operation_id="createDeployment",
        summary="Deploy a model: answers 202 while it loads, 409 at once when it cannot fit (naming the shortfall)",
        status_code=202,
        responses=error_responses(400, 404, 409),
    )
    async def create_deployment(
        self, cluster: NamedDependency[Cluster], data: JSONBody[DeploymentSettings]
    ) -> DeploymentStatus:
        return deployment_status(await cluster.deploy(data))

    @delete(
        "/api/deployments/{name:path}",
        operation_id="deleteDeployment",
        summary="Stop taking requests, let those in flight finish, then stop the engines and remove it",
        status_code=202,
        responses=error_responses(404),
    )
    async def delete_deployment(self, cluster: NamedDependency[Cluster], name: FromPath[str]) -> DeploymentStatus:
        return deployment_status(cluster.undeploy(name.lstrip("/")))

    @get(
        "/ready",
        operation_id="getReadiness",
        summary="200 once every deployment declared in settings serves (or is put away); 503 with the reason before, "
        "with Retry-After while they load, without it once one failed for good (`failed` names it)",
        responses={503: ResponseSpec(Readiness, description="Not ready yet, or failed", generate_examples=False)},
    )
    async def ready(self, cluster: NamedDependency[Cluster]) -> Response[Readiness]:
        body = cluster.readiness()
        if body.ready:
            return Response(body)
        # A failed deployment stays failed until someone acts: a retry soon would not change the answer.
        return Response(body, status_code=503, headers={} if body.failed else {"Retry-After": "5"})
