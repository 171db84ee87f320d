"""The local devices: NVIDIA GPUs through NVML (nvidia-ml-py's `pynvml`) where a driver is present, then the CPU.

Every call here blocks (NVML talks to the driver, psutil reads /proc), so async callers run `list_devices` in a
worker thread. It never raises for a missing or broken NVML: no library or no driver means no GPUs, and a query
that one GPU does not answer (utilization on some boards, process memory inside containers) becomes None.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import msgspec
import psutil

T = TypeVar("T")


class DeviceProcess(msgspec.Struct, kw_only=True):
    pid: int
    used_memory_bytes: int | None  # None when NVML does not say (e.g. inside containers)
    name: str | None = None  # via psutil where the process is visible from here


class Device(msgspec.Struct, kw_only=True):
    kind: Literal["cpu", "gpu"]
    index: int  # the NVML index; 0 for the cpu
    name: str
    uuid: str | None = None  # "GPU-..." from NVML; None for the cpu
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int  # NVML free; for the cpu psutil's available
    cores: int | None = None  # cpu only
    # cpu only: whether it computes in bfloat16 natively (None: not known here). Without it, bf16 matrix products
    # are emulated: at 16 rows and more they took 2.5-4.4x float32's time (docs/performance.md).
    native_bf16: bool | None = None
    utilization_percent: float | None = None
    temperature_c: int | None = None
    processes: list[DeviceProcess] = []  # gpu only: compute processes holding memory; [] when unknown


def list_devices() -> list[Device]:
    """The GPUs first, then the cpu. Blocking: run it in a worker thread from async code."""
    return [*_gpus(), _cpu()]


def _gpus() -> list[Device]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver (NVMLError_LibraryNotFound, _DriverNotLoaded): a machine without NVIDIA GPUs
        return []
    try:
        count = _try(pynvml.nvmlDeviceGetCount) or 0
        return [device for index in range(count) if (device := _gpu(pynvml, index)) is not None]
    finally:
        _try(pynvml.nvmlShutdown)


def _gpu(nvml: Any, index: int) -> Device | None:
    handle = _try(nvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:  # e.g. a GPU fallen off the bus: nothing else about it will answer
        return None
    memory = _try(nvml.nvmlDeviceGetMemoryInfo, handle)
    utilization = _try(nvml.nvmlDeviceGetUtilizationRates, handle)
    temperature = _try(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
    return Device(
        kind="gpu",
        index=index,
        name=_text(_try(nvml.nvmlDeviceGetName, handle)) or f"GPU {index}",
        uuid=_text(_try(nvml.nvmlDeviceGetUUID, handle)),
        # The spec's memory fields are not optional: a board that does not tell its memory reports 0.
        memory_total_bytes=int(memory.total) if memory is not None else 0,
        memory_used_bytes=int(memory.used) if memory is not None else 0,
        memory_free_bytes=int(memory.free) if memory is not None else 0,
        utilization_percent=float(utilization.gpu) if utilization is not None else None,
        temperature_c=int(temperature) if temperature is not None else None,
        processes=[
            DeviceProcess(
                pid=int(p.pid),
                used_memory_bytes=int(p.usedGpuMemory) if p.usedGpuMemory is not None else None,
                name=_process_name(int(p.pid)),
            )
            for p in _try(nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        ],
    )


def _try(fn: Callable[..., T], *args: Any) -> T | None:
    """One NVML query, None when it fails. Not only NVMLError: pynvml raises NVMLLibraryMismatchError (a plain
    Exception) when the library and the driver disagree, and an old pynvml may lack a function altogether."""
    try:
        return fn(*args)
    except Exception:
        return None


def _text(value: str | bytes | None) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value  # pynvml before 11.5: bytes


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):  # gone, not ours to see, or in another pid namespace (containers)
        return None


def _cpu() -> Device:
    memory = psutil.virtual_memory()
    return Device(
        kind="cpu",
        index=0,
        name=_cpu_name(),
        memory_total_bytes=memory.total,
        memory_used_bytes=memory.total - memory.available,
        memory_free_bytes=memory.available,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        utilization_percent=psutil.cpu_percent(interval=None),  # since the previous call; 0.0 on the first
        native_bf16=native_bf16(),
    )


# The instruction-set flags (x86 `flags`, arm `Features` in /proc/cpuinfo) that compute in bfloat16.
_BF16_FLAGS = {"x86_64": {"avx512_bf16", "amx_bf16"}, "aarch64": {"bf16"}}


@functools.cache
def native_bf16() -> bool | None:
    """Whether this CPU computes in bfloat16 natively; None where /proc/cpuinfo or the architecture does not say."""
    wanted = _BF16_FLAGS.get(platform.machine())
    if wanted is None:
        return None
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    return cpu_flags_have_bf16(text, wanted)


def cpu_flags_have_bf16(cpuinfo: str, wanted: set[str]) -> bool | None:
    """From a /proc/cpuinfo text: whether its first processor lists one of ``wanted``; None without a flags line."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return not wanted.isdisjoint(value.split())
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"  # not Linux, or an arm cpuinfo without a model name
