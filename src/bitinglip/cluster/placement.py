"""Placement by real memory: what a deployment needs, which devices have it, and what holds it otherwise.

A deployment's need is its weights (exact, from the safetensors headers) plus its fixed KV cache plus its LoRA
adapters' slots plus an engine's overhead, split over its devices. A GPU's room is what NVML says is free now:
engines start one at a time, so that figure already counts every engine that runs. The CPU's room is a budget
(`cluster.cpu_memory_budget_gib`) less what our deployments hold, and never more than the system has
available. Pure functions over plain data: the cluster gathers the figures, these decide.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Literal

import msgspec

from bitinglip.cluster.devices import Device
from bitinglip.core import Conflict

GIB = 1024**3
DEFAULT_OVERHEAD_GIB = {"cpu": 1.5, "gpu": 2.0}


class MemoryEstimate(msgspec.Struct, kw_only=True):
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int  # per device
    lora_bytes: int = 0  # LoRA adapters' slots, which vLLM reserves at start-up

    def per_device(self, count: int) -> int:
        """Weights, KV cache and LoRA slots are split over the devices (tensor/pipeline parallel); each carries an
        overhead."""
        return -(-(self.weights_bytes + self.kv_cache_bytes + self.lora_bytes) // count) + self.overhead_bytes

    def total(self, count: int) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.lora_bytes + self.overhead_bytes * count


class Holder(msgspec.Struct, kw_only=True):
    """Memory one of our deployments holds, per device it runs on."""

    name: str
    kind: Literal["cpu", "gpu"]
    devices: list[int]
    bytes_per_device: int
    pids: list[int]
    evictable: bool  # idle and allowed to be put away
    last_used: float  # monotonic; the least recent is evicted first


class Placement(msgspec.Struct, kw_only=True):
    kind: Literal["cpu", "gpu"]
    devices: list[int]


def weights_bytes(path: Path) -> int:
    """Exact tensor bytes from each safetensors header (8-byte length, then JSON offsets); file sizes otherwise."""
    total = 0
    files = sorted(path.glob("*.safetensors"))
    for file in files:
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header: dict[str, Any] = json.loads(f.read(length))
        total += sum(t["data_offsets"][1] - t["data_offsets"][0] for k, t in header.items() if k != "__metadata__")
    if not files:
        total = sum(f.stat().st_size for pattern in ("*.bin", "*.pt", "*.pth") for f in path.glob(pattern))
    return total


def device_count(engine_args: dict[str, Any]) -> int:
    return int(engine_args.get("tensor_parallel_size", 1)) * int(engine_args.get("pipeline_parallel_size", 1))


def size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _holders_text(holders: list[Holder], extra: list[str]) -> str:
    parts = [f"{h.name} {size(h.bytes_per_device)}" for h in holders] + extra
    return "held by " + ", ".join(parts) if parts else "nothing of ours holds any"


def place_cpu(
    name: str, need: MemoryEstimate, cpu: Device, budget_bytes: int, holders: list[Holder], replicas: int = 1
) -> Placement:
    want = need.total(1) * replicas
    ours = [h for h in holders if h.kind == "cpu"]
    free = budget_bytes - sum(h.bytes_per_device for h in ours)
    if want > free:
        raise InsufficientMemory(
            name,
            want,
            need,
            f"the CPU memory budget ({size(budget_bytes)}) has {size(max(free, 0))} free, {_holders_text(ours, [])}",
            want - free,
        )
    if want > cpu.memory_free_bytes:
        raise InsufficientMemory(
            name,
            want,
            need,
            f"the system has {size(cpu.memory_free_bytes)} available of "
            f"{size(cpu.memory_total_bytes)}; other processes hold the rest",
            want - cpu.memory_free_bytes,
        )
    return Placement(kind="cpu", devices=[0])


def place_gpus(
    name: str,
    need: MemoryEstimate,
    gpus: list[Device],
    wanted: list[int] | None,
    count: int,
    holders: list[Holder],
    replicas: int = 1,
) -> Placement:
    """``count`` GPUs per replica, each replica on GPUs of its own (`Placement.devices` in replica order)."""
    by_index = {g.index: g for g in gpus}
    if wanted:
        unknown = [i for i in wanted if i not in by_index]
        if unknown:
            raise Conflict(f"no GPU {unknown[0]} here; GET /api/cluster/devices lists them", code="no_such_device")
        if len(set(wanted)) % replicas:
            raise Conflict(f"{len(wanted)} GPUs cannot be shared evenly by {replicas} replicas", code="no_such_device")
        chosen = [by_index[i] for i in dict.fromkeys(wanted)]
        count = len(chosen) // replicas
    else:
        if count * replicas > len(gpus):
            raise Conflict(
                f"deployment {name} needs {count * replicas} GPUs; this machine has {len(gpus)}", code="no_such_device"
            )
        chosen = sorted(gpus, key=lambda g: -g.memory_free_bytes)[: count * replicas]
    per_device = need.per_device(count)
    for gpu in chosen:
        if per_device > gpu.memory_free_bytes:
            ours = [h for h in holders if h.kind == "gpu" and gpu.index in h.devices]
            our_pids = {pid for h in ours for pid in h.pids}
            others = [
                f"pid {p.pid}{f' ({p.name})' if p.name else ''} {size(p.used_memory_bytes or 0)}"
                for p in gpu.processes
                if p.pid not in our_pids
            ]
            raise InsufficientMemory(
                name,
                per_device,
                need,
                f"GPU {gpu.index} ({gpu.name}) has {size(gpu.memory_free_bytes)} free of "
                f"{size(gpu.memory_total_bytes)}, {_holders_text(ours, others)}",
                per_device - gpu.memory_free_bytes,
            )
    return Placement(kind="gpu", devices=[g.index for g in chosen])


class InsufficientMemory(Conflict):
    code = "insufficient_memory"

    def __init__(self, name: str, want: int, need: MemoryEstimate, where: str, short: int) -> None:
        lora = f" + LoRA adapters {size(need.lora_bytes)}" if need.lora_bytes else ""
        super().__init__(
            f"not enough memory for deployment {name}: it needs {size(want)} ({want} bytes: weights "
            f"{size(need.weights_bytes)} + KV cache {size(need.kv_cache_bytes)}{lora} + engine overhead "
            f"{size(need.overhead_bytes)}) but {where}; short by {size(short)} ({short} bytes)"
        )
        self.short_bytes = short
