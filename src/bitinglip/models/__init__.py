"""The model registry (table `models`) and model files: hub pulls, imports, the tiny default.

Each name is imported from its module on first use (PEP 562 `__getattr__`, as `bitinglip.core` does): the
registry alone (`bitinglip models list`) needs neither huggingface_hub (the hub client) nor Litestar (the plugin).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy sees; at run time `__getattr__` imports these
    from bitinglip.models.hub import HubClient
    from bitinglip.models.plugin import ModelsPlugin
    from bitinglip.models.pull_state import Pull, PullStatus
    from bitinglip.models.pulls import PullManager
    from bitinglip.models.registry import ModelRecord, ModelRegistry, inspect_dir
    from bitinglip.models.service import TINY_NAME, ModelService, SearchResult

# name -> the module under bitinglip.models that defines it
_LAZY: dict[str, str] = {
    "HubClient": "hub",
    "ModelsPlugin": "plugin",
    "Pull": "pull_state",
    "PullStatus": "pull_state",
    "PullManager": "pulls",
    "ModelRecord": "registry",
    "ModelRegistry": "registry",
    "inspect_dir": "registry",
    "TINY_NAME": "service",
    "ModelService": "service",
    "SearchResult": "service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
