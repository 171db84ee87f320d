"""Local devices and the vLLM engines that run on them."""

from bitinglip.cluster.cluster import Cluster, EngineStatus
from bitinglip.cluster.devices import Device, list_devices
from bitinglip.cluster.engine import Engine, check_engine_args, supported_architectures
from bitinglip.cluster.plugin import ClusterPlugin

__all__ = [
    "Cluster",
    "ClusterPlugin",
    "Device",
    "Engine",
    "EngineStatus",
    "check_engine_args",
    "list_devices",
    "supported_architectures",
]
