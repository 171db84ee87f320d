"""The model registry (table `models`) and model files: hub pulls, imports, the tiny default."""

from bitinglip.models.plugin import ModelsPlugin
from bitinglip.models.registry import ModelRecord, ModelRegistry, inspect_dir
from bitinglip.models.service import TINY_NAME, ModelService

__all__ = ["TINY_NAME", "ModelRecord", "ModelRegistry", "ModelService", "ModelsPlugin", "inspect_dir"]
