"""Mounts the cluster's routes and hands them the Cluster; starting and stopping it is `Components.running`'s."""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPlugin

from bitinglip.cluster.api import ClusterController
from bitinglip.cluster.cluster import Cluster
from bitinglip.cluster.instances import Instances
from bitinglip.cluster.ray_nodes import RayView


class ClusterPlugin(InitPlugin):
    def __init__(self, cluster: Cluster, instances: Instances) -> None:
        self.cluster = cluster
        self.instances = instances
        settings = cluster.settings
        self.ray_view = RayView(settings.ray_address) if settings.executor == "ray" else None

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.append(ClusterController)
        app_config.dependencies["cluster"] = Provide(lambda: self.cluster, use_cache=True, sync_to_thread=False)
        app_config.dependencies["instances"] = Provide(lambda: self.instances, use_cache=True, sync_to_thread=False)
        app_config.dependencies["ray_view"] = Provide(lambda: self.ray_view, use_cache=True, sync_to_thread=False)
        return app_config
