"""Engine arguments: checked against vLLM's own `AsyncEngineArgs`, with the cluster's defaults filled in."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitinglip.cluster.devices import native_bf16
from bitinglip.core import ClusterSettings, SettingsError, get_logger

log = get_logger(__name__)

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
    from bitinglip.cluster.vllm.reasoning import check_reasoning_parser
    from bitinglip.cluster.vllm.tools import check_tool_parser

    known = engine_arg_names() | FRONTEND_ARGS
    check_tool_parser(table.get("tool_call_parser"), f"{source}.tool_call_parser")
    # Also an engine argument (the engine holds a request's output constraint back until its reasoning ends).
    check_reasoning_parser(table.get("reasoning_parser"), f"{source}.reasoning_parser")
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


def warn_if_bf16_emulated(dtype: str, model: str) -> None:
    """Once per engine start: a bfloat16 engine on a CPU that emulates bfloat16 (``dtype`` as vLLM's model config
    prints it) is told what float32 would change."""
    if dtype == "torch.bfloat16" and is_cpu_platform() and native_bf16() is False:
        log.warning(
            "engine.cpu_bf16_emulated",
            model=model,
            hint='this CPU has no bfloat16 instructions: with many streams at once, dtype = "float32" in the '
            "engine table runs batched steps up to 1.6x faster; bfloat16 stays faster for one stream of a large "
            "model (docs/performance.md#bfloat16-on-a-cpu-without-it)",
        )


def effective_engine_args(settings: ClusterSettings, table: dict[str, Any]) -> dict[str, Any]:
    """`cluster.engine`, then the deployment's own table, then the cluster's defaults where neither set a value."""
    args = {**settings.engine, **table}
    # A fixed KV cache on every device: left as a fraction of "free" memory, an engine started next to another
    # counts the other's memory as its own (and on the CPU vLLM would take nearly all RAM). Its size is set when
    # the model is known (`kv_cache_bytes`): what the model can use, `cluster.kv_cache_gib` at most.
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


SEQUENCES_IF_UNSET = 256  # sequences a KV cache is sized for when `max_num_seqs` is not set
_DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}


def kv_cache_need(model_dir: Path, engine_args: Mapping[str, Any]) -> int | None:
    """The most KV cache the model can use: `max_num_seqs` sequences of `max_model_len` tokens at its bytes per
    token (2 x layers x KV heads x head size x the cache's bytes per number), from its config.json. None where the
    config does not say, or its attention is not the plain kind this counts (then the setting is used)."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = config.get("text_config") or config
    if any(key in text for key in ("kv_lora_rank", "layer_types", "attn_type_list")):
        return None  # MLA, hybrid or per-layer attention: not counted here
    layers, heads = text.get("num_hidden_layers"), text.get("num_attention_heads")
    kv_heads = text.get("num_key_value_heads", heads)
    head_dim = text.get("head_dim") or (text.get("hidden_size", 0) // heads if isinstance(heads, int) and heads else 0)
    cache_dtype = engine_args.get("kv_cache_dtype", "auto")
    if cache_dtype == "auto":
        cache_dtype = engine_args.get("dtype", "auto")
    if cache_dtype == "auto":
        cache_dtype = text.get("dtype") or text.get("torch_dtype") or config.get("torch_dtype") or "bfloat16"
    width = _DTYPE_BYTES.get(str(cache_dtype))
    length = engine_args.get("max_model_len") or text.get("max_position_embeddings")
    sequences = engine_args.get("max_num_seqs") or SEQUENCES_IF_UNSET
    numbers = (layers, kv_heads, head_dim, width, length, sequences)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in numbers):
        return None
    return int(2 * layers * kv_heads * head_dim * width * length * sequences)


def fit_context(args: dict[str, Any], own: Mapping[str, Any], model_dir: Path) -> dict[str, Any]:
    """The engine arguments with `cluster.engine`'s `max_model_len` cut to the model's own positions where they are
    fewer: that setting is the longest context a deployment gets, not one every model must take (vLLM refuses a
    context past a model's positions). A deployment's own `max_model_len` (``own``) is passed as it is."""
    length = args.get("max_model_len")
    if not isinstance(length, int) or "max_model_len" in own or os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        return args
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return args
    text = config.get("text_config") or config
    if text.get("rope_scaling") or config.get("rope_scaling"):
        return args  # vLLM derives a longer context from the scaling: left to it
    positions = text.get("max_position_embeddings")
    if isinstance(positions, int) and not isinstance(positions, bool) and 0 < positions < length:
        return {**args, "max_model_len": positions}
    return args


def kv_cache_bytes(settings: ClusterSettings, engine_args: Mapping[str, Any], model_dir: Path) -> tuple[int, bool]:
    """An engine's KV cache: what its arguments say, else VLLM_CPU_KVCACHE_SPACE, else what the model can use
    with `cluster.kv_cache_gib` at most; and whether it was sized here (to pass to the engine)."""
    if "kv_cache_memory_bytes" in engine_args:
        return int(engine_args["kv_cache_memory_bytes"]), False
    if "VLLM_CPU_KVCACHE_SPACE" in os.environ:
        return int(float(os.environ["VLLM_CPU_KVCACHE_SPACE"]) * GIB), False
    cap = int(settings.kv_cache_gib * GIB)
    need = kv_cache_need(model_dir, engine_args)
    return (cap if need is None else min(cap, need)), True


CPU_ENGINE_POLL_US = 100  # `cluster.engine_poll_us` on the CPU build when unset


def engine_env(settings: ClusterSettings, *, cpu: bool | None = None) -> dict[str, str]:
    """Environment the engine processes need: vLLM's Ray executor joins the cluster named by RAY_ADDRESS; the
    engine processes poll for each other's messages instead of spinning (`spin.py`) where `cluster.engine_poll_us`
    says so, by default on the CPU build; once told to stop, they exit without Python's teardown (`quick_exit.py`);
    on the CPU build the engine core forks its workers instead of starting them afresh (`fork_workers.py`), and is
    itself forked from the fork server unless `cluster.fork_server` is off (`fork_server.py`).
    ``cpu``: whether this is the CPU build (default: vLLM's platform says)."""
    from bitinglip.cluster.vllm.fork_server import FORK_SERVER_ENV
    from bitinglip.cluster.vllm.fork_workers import FORK_ENV
    from bitinglip.cluster.vllm.quick_exit import EXIT_ENV
    from bitinglip.cluster.vllm.spin import POLL_ENV

    cpu = is_cpu_platform() if cpu is None else cpu
    env: dict[str, str] = {EXIT_ENV: "1"}
    if cpu:
        env[FORK_ENV] = "1"
        if settings.fork_server:
            env[FORK_SERVER_ENV] = "1"
    if settings.executor == "ray" and settings.ray_address:
        env["RAY_ADDRESS"] = settings.ray_address
    poll_us = settings.engine_poll_us
    if poll_us is None:
        poll_us = CPU_ENGINE_POLL_US if cpu else 0
    if poll_us:
        env[POLL_ENV] = f"{poll_us / 1e6:.6f}"
    return env
