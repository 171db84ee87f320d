"""Engine arguments: checked against vLLM's own `AsyncEngineArgs`, with the CPU defaults filled in."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bitinglip.core import SettingsError

# Engine arguments the cluster sets itself; a user picks the model with cluster.model instead.
RESERVED_ARGS = frozenset({"model", "served_model_name"})
GIB = 1024**3


def engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def check_engine_args(table: dict[str, Any], source: str = "cluster.engine") -> None:
    """Refuse keys vLLM does not know before anything starts, naming the key."""
    known = engine_arg_names()
    for key in table:
        if key in RESERVED_ARGS:
            raise SettingsError(f"setting `{source}.{key}`: set the model with cluster.model instead", param=key)
        if key not in known:
            close = sorted(k for k in known if key.replace("-", "_") in k or k in key)[:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SettingsError(f"setting `{source}.{key}`: not a vLLM engine argument{hint}", param=key)


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def effective_engine_args(table: dict[str, Any], cpu_kv_cache_gib: float) -> dict[str, Any]:
    """The engine table with the CPU defaults filled in where the user set nothing."""
    args = dict(table)
    if is_cpu_platform():
        # Left unset, vLLM sizes the CPU KV cache as a fraction of all RAM (~22 GB on a 24 GB machine).
        if "kv_cache_memory_bytes" not in args and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            args["kv_cache_memory_bytes"] = int(cpu_kv_cache_gib * GIB)
        # torch.compile on the CPU adds minutes to start-up for little gain on small models.
        args.setdefault("enforce_eager", True)
    return args
