"""Local devices and the engines that run on them. The gateway sees engines only through `protocol.py`."""

from bitinglip.cluster.cluster import Cluster, EngineStatus, ModelResolver
from bitinglip.cluster.devices import Device, list_devices
from bitinglip.cluster.plugin import ClusterPlugin
from bitinglip.cluster.protocol import CompletionDelta, EngineClient, EngineLookup, EngineOutput, TokenLogprob
from bitinglip.cluster.vllm import check_engine_args, supported_architectures

__all__ = [
    "Cluster",
    "ClusterPlugin",
    "CompletionDelta",
    "Device",
    "EngineClient",
    "EngineLookup",
    "EngineOutput",
    "EngineStatus",
    "ModelResolver",
    "TokenLogprob",
    "check_engine_args",
    "list_devices",
    "supported_architectures",
]
