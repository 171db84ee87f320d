"""The local devices: NVIDIA GPUs through NVML where the library and a driver are present, and the CPU."""

from __future__ import annotations

import os
from typing import Literal

import msgspec
import psutil


class Device(msgspec.Struct, kw_only=True):
    kind: Literal["cpu", "gpu"]
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    cores: int | None = None
    utilization_percent: float | None = None
    temperature_c: int | None = None


def _cpu() -> Device:
    memory = psutil.virtual_memory()
    name = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "cpu")
    except OSError:
        pass
    return Device(
        kind="cpu",
        index=0,
        name=name,
        memory_total_bytes=memory.total,
        memory_used_bytes=memory.total - memory.available,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        utilization_percent=psutil.cpu_percent(interval=None),
    )


def _gpus() -> list[Device]:
    try:
        import pynvml  # nvidia-ml-py; comes with vLLM's GPU build
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: a machine without NVIDIA GPUs
        return []
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
            devices.append(
                Device(
                    kind="gpu",
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else name,
                    memory_total_bytes=int(memory.total),
                    memory_used_bytes=int(memory.used),
                    utilization_percent=float(utilization.gpu),
                    temperature_c=int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
                )
            )
        return devices
    finally:
        pynvml.nvmlShutdown()


def list_devices() -> list[Device]:
    """Blocking (NVML calls); run it in a worker thread from async code."""
    return [*_gpus(), _cpu()]
