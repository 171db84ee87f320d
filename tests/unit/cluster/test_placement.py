"""Placement by real memory: exact weight sizes, devices picked by free memory, refusals that name the bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bitinglip.cluster import Device, DeviceProcess
from bitinglip.cluster.placement import Holder, InsufficientMemory, MemoryEstimate, place_cpu, place_gpus, weights_bytes
from bitinglip.core import Conflict

GIB = 1024**3


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_weights_come_from_the_safetensors_headers(tmp_path: Path, tiny_model_dir: Path) -> None:
    write_safetensors(tmp_path / "model-00001.safetensors", {"a": ("BF16", [4, 8], 64), "b": ("F32", [10], 40)})
    write_safetensors(tmp_path / "model-00002.safetensors", {"c": ("BF16", [100], 200)})
    (tmp_path / "config.json").write_text("{}")
    assert weights_bytes(tmp_path) == 304
    tiny = weights_bytes(tiny_model_dir)
    file_size = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    assert 0 < tiny < file_size  # the tensors, without the header


def gpu(index: int, free_gib: float, processes: list[DeviceProcess] | None = None) -> Device:
    return Device(
        kind="gpu",
        index=index,
        name="NVIDIA H100 80GB HBM3",
        uuid=f"GPU-{index}",
        memory_total_bytes=80 * GIB,
        memory_used_bytes=int((80 - free_gib) * GIB),
        memory_free_bytes=int(free_gib * GIB),
        processes=processes or [],
    )


NEED = MemoryEstimate(weights_bytes=16 * GIB, kv_cache_bytes=8 * GIB, overhead_bytes=2 * GIB)


def test_gpus_with_the_most_free_memory_are_chosen_and_the_need_is_split() -> None:
    gpus = [gpu(0, 10), gpu(1, 70), gpu(2, 30)]
    assert place_gpus("m", NEED, gpus, None, 1, []).devices == [1]
    assert place_gpus("m", NEED, gpus, None, 2, []).devices == [1, 2]  # 14 GiB each fits in 30
    assert NEED.per_device(2) == 14 * GIB and NEED.total(2) == 28 * GIB
    assert place_gpus("m", NEED, gpus, [2], 1, []).devices == [2]
    assert place_gpus("m", NEED, gpus, None, 1, [], replicas=2).devices == [1, 2]  # a GPU of its own each
    with pytest.raises(Conflict, match="3 GPUs cannot be shared evenly by 2 replicas"):
        place_gpus("m", NEED, gpus, [0, 1, 2], 1, [], replicas=2)


def test_a_gpu_refusal_names_the_shortfall_and_who_holds_the_memory() -> None:
    other = DeviceProcess(pid=4242, used_memory_bytes=50 * GIB, name="python")
    ours = DeviceProcess(pid=100, used_memory_bytes=20 * GIB, name="VLLM::EngineCore")
    gpus = [gpu(0, 10, [other, ours])]
    holder = Holder(
        name="llama", kind="gpu", devices=[0], bytes_per_device=20 * GIB, pids=[100], evictable=False, last_used=0
    )
    with pytest.raises(InsufficientMemory) as refused:
        place_gpus("qwen", NEED, gpus, None, 1, [holder])
    message = refused.value.message
    assert "needs 26.00 GiB (27917287424 bytes" in message
    assert "GPU 0 (NVIDIA H100 80GB HBM3) has 10.00 GiB free of 80.00 GiB" in message
    assert "held by llama 20.00 GiB, pid 4242 (python) 50.00 GiB" in message
    assert refused.value.short_bytes == 16 * GIB and "short by 16.00 GiB (17179869184 bytes)" in message
    with pytest.raises(Conflict, match="no GPU 3"):
        place_gpus("qwen", NEED, gpus, [3], 1, [])
    with pytest.raises(Conflict, match="needs 2 GPUs; this machine has 1"):
        place_gpus("qwen", NEED, gpus, None, 2, [])


def test_the_cpu_budget_counts_our_deployments_and_the_system_what_is_available() -> None:
    cpu = Device(
        kind="cpu",
        index=0,
        name="cpu",
        memory_total_bytes=24 * GIB,
        memory_used_bytes=20 * GIB,
        memory_free_bytes=4 * GIB,
        cores=2,
    )
    small = MemoryEstimate(weights_bytes=GIB, kv_cache_bytes=GIB, overhead_bytes=GIB)
    assert place_cpu("m", small, cpu, 16 * GIB, []).devices == [0]
    with pytest.raises(InsufficientMemory, match=r"needs 6\.00 GiB"):  # two replicas of 3 GiB, 4 GiB available
        place_cpu("m", small, cpu, 16 * GIB, [], replicas=2)
    held = Holder(name="a", kind="cpu", devices=[0], bytes_per_device=14 * GIB, pids=[], evictable=True, last_used=0)
    with pytest.raises(InsufficientMemory, match=r"budget \(16.00 GiB\) has 2.00 GiB free, held by a 14.00 GiB"):
        place_cpu("m", small, cpu, 16 * GIB, [held])
    big = MemoryEstimate(weights_bytes=4 * GIB, kv_cache_bytes=GIB, overhead_bytes=GIB)
    with pytest.raises(InsufficientMemory, match=r"the system has 4\.00 GiB available of 24\.00 GiB"):
        place_cpu("m", big, cpu, 16 * GIB, [])
