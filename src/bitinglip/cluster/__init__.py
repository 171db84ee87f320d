"""Local devices, the deployments on them and their engines. The gateway sees engines only through `protocol.py`."""

from bitinglip.cluster.cluster import Cluster, ModelCatalog
from bitinglip.cluster.deployment import Deployment, DeploymentState, TimelineEvent, keep_alive_seconds
from bitinglip.cluster.devices import Device, DeviceProcess, list_devices
from bitinglip.cluster.instances import (
    SERVING_STATES,
    Instance,
    InstanceDeployment,
    Instances,
    advertised_url,
    serving_elsewhere,
    summarize,
)
from bitinglip.cluster.plugin import ClusterPlugin
from bitinglip.cluster.protocol import (
    Adapter,
    CompletionDelta,
    EngineClient,
    EngineFactory,
    EngineLookup,
    EngineOutput,
    Lease,
    ManagedEngine,
    Reasoning,
    ServedModel,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolCalls,
)
from bitinglip.cluster.stats import EngineStats
from bitinglip.cluster.status import DeploymentStatus
from bitinglip.cluster.vllm import (
    check_engine_args,
    peft_problems,
    remove_fork_server_folder,
    start_fork_server,
    supported_architectures,
)

__all__ = [
    "SERVING_STATES",
    "Adapter",
    "Cluster",
    "ClusterPlugin",
    "CompletionDelta",
    "Deployment",
    "DeploymentState",
    "DeploymentStatus",
    "Device",
    "DeviceProcess",
    "EngineClient",
    "EngineFactory",
    "EngineLookup",
    "EngineOutput",
    "EngineStats",
    "Instance",
    "InstanceDeployment",
    "Instances",
    "Lease",
    "ManagedEngine",
    "ModelCatalog",
    "Reasoning",
    "ServedModel",
    "TimelineEvent",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "ToolCalls",
    "advertised_url",
    "check_engine_args",
    "keep_alive_seconds",
    "list_devices",
    "peft_problems",
    "remove_fork_server_folder",
    "serving_elsewhere",
    "start_fork_server",
    "summarize",
    "supported_architectures",
]
