"""The model registry (table `models`) and model files: hub pulls, imports, the tiny default."""

from bitinglip.models.hub import HubClient
from bitinglip.models.plugin import ModelsPlugin
from bitinglip.models.pull_state import Pull, PullStatus
from bitinglip.models.pulls import PullManager
from bitinglip.models.registry import ModelRecord, ModelRegistry, inspect_dir
from bitinglip.models.service import TINY_NAME, ModelService, SearchResult

__all__ = [
    "TINY_NAME",
    "HubClient",
    "ModelRecord",
    "ModelRegistry",
    "ModelService",
    "ModelsPlugin",
    "Pull",
    "PullManager",
    "PullStatus",
    "SearchResult",
    "inspect_dir",
]
