"""Engine arguments: checked against vLLM's own `AsyncEngineArgs`, with the cluster's defaults filled in."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bitinglip.core import ClusterSettings, SettingsError

# Engine arguments the cluster sets itself; a user picks the model with cluster.model instead.
RESERVED_ARGS = frozenset({"model", "served_model_name"})
# What `vllm serve` takes beside the engine's own arguments and BitingLip serves too: read by the engine wrapper,
# never passed to AsyncEngineArgs. `tool_call_parser`: the model's tool-call format (one of vLLM's parsers).
FRONTEND_ARGS = frozenset({"tool_call_parser"})
GIB = 1024**3


def engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def check_engine_args(table: dict[str, Any], source: str = "cluster.engine") -> None:
    """Refuse keys vLLM does not know before anything starts, naming the key."""
    from bitinglip.cluster.vllm.tools import check_tool_parser

    known = engine_arg_names() | FRONTEND_ARGS
    check_tool_parser(table.get("tool_call_parser"), f"{source}.tool_call_parser")
    for key in table:
        if key in RESERVED_ARGS:
            raise SettingsError(f"setting `{source}.{key}`: set the model with `model` instead", param=key)
        if key not in known:
            close = sorted(k for k in known if key.replace("-", "_") in k or k in key)[:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SettingsError(f"setting `{source}.{key}`: not a vLLM engine argument{hint}", param=key)


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def sleep_mode_available() -> bool:
    """vLLM's sleep mode (weights off the GPU, KV cache freed, woken in seconds) exists on CUDA, not on the CPU."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


def effective_engine_args(settings: ClusterSettings, table: dict[str, Any]) -> dict[str, Any]:
    """`cluster.engine`, then the deployment's own table, then the cluster's defaults where neither set a value."""
    args = {**settings.engine, **table}
    # A fixed KV cache on every device: left as a fraction of "free" memory, an engine started next to another
    # counts the other's memory as its own (and on the CPU vLLM would take ~92% of all RAM).
    if "kv_cache_memory_bytes" not in args and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        args["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * GIB)
    if is_cpu_platform():
        # torch.compile on the CPU adds minutes to start-up for little gain on small models.
        args.setdefault("enforce_eager", True)
    elif sleep_mode_available():
        args.setdefault("enable_sleep_mode", True)  # idle deployments sleep and wake in seconds, not reload
    if settings.executor == "ray":
        args.setdefault("distributed_executor_backend", "ray")
    # Structured JSON without filler whitespace: left flexible, a weak model pads valid JSON with hundreds of blank
    # characters until max_tokens. vLLM takes this per engine (not per request), and only with a named backend.
    given = dict(args.get("structured_outputs_config") or {})
    if given.get("backend", "xgrammar") in ("xgrammar", "guidance"):
        args["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True, **given}
    return args


def engine_env(settings: ClusterSettings) -> dict[str, str]:
    """Environment the engine processes need: vLLM's Ray executor joins the cluster named by RAY_ADDRESS."""
    if settings.executor == "ray" and settings.ray_address:
        return {"RAY_ADDRESS": settings.ray_address}
    return {}
