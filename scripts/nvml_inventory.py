"""Record what NVML answers on this machine, as JSON on stdout: the fixture shape of tests/unit/cluster/test_devices.py.

    python3 scripts/nvml_inventory.py > tests/unit/cluster/nvml_inventory_h100.json

Standalone on purpose: it needs only nvidia-ml-py (`import pynvml`), no BitingLip. It makes the calls that
bitinglip/cluster/devices.py makes, and records each one's outcome under the function's name, either
{"value": ...} or {"error": "NVMLError_NotSupported", "code": 3}. Names and UUIDs are recorded as str even where
an old pynvml returns bytes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pynvml


def outcome(fn: Any, *args: Any, convert: Any = lambda value: value) -> dict[str, Any]:
    try:
        value = fn(*args)
    except Exception as e:  # recording failures is the point
        return failure(e)
    return {"value": convert(value)}


def failure(e: Exception) -> dict[str, Any]:
    return {"error": type(e).__name__, "code": getattr(e, "value", None)}  # NVMLError.value: the NVML return code


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def memory(info: Any) -> dict[str, int]:
    return {"total": int(info.total), "used": int(info.used), "free": int(info.free)}


def utilization(rates: Any) -> dict[str, int]:
    return {"gpu": int(rates.gpu), "memory": int(rates.memory)}


def processes(procs: Any) -> list[dict[str, Any]]:
    return [
        {"pid": int(p.pid), "usedGpuMemory": None if p.usedGpuMemory is None else int(p.usedGpuMemory)} for p in procs
    ]


def record() -> dict[str, Any]:
    inventory: dict[str, Any] = {"nvmlInit": outcome(pynvml.nvmlInit)}
    if "error" in inventory["nvmlInit"]:
        return {**inventory, "devices": []}
    try:
        inventory["nvmlSystemGetDriverVersion"] = outcome(pynvml.nvmlSystemGetDriverVersion, convert=text)
        inventory["nvmlDeviceGetCount"] = outcome(pynvml.nvmlDeviceGetCount)
        inventory["devices"] = []
        for index in range(inventory["nvmlDeviceGetCount"].get("value", 0)):
            device: dict[str, Any] = {}
            inventory["devices"].append(device)
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as e:
                device["nvmlDeviceGetHandleByIndex"] = failure(e)
                continue
            device["nvmlDeviceGetHandleByIndex"] = {"value": index}  # a pointer: the index stands for it
            device["nvmlDeviceGetName"] = outcome(pynvml.nvmlDeviceGetName, handle, convert=text)
            device["nvmlDeviceGetUUID"] = outcome(pynvml.nvmlDeviceGetUUID, handle, convert=text)
            device["nvmlDeviceGetMemoryInfo"] = outcome(pynvml.nvmlDeviceGetMemoryInfo, handle, convert=memory)
            device["nvmlDeviceGetUtilizationRates"] = outcome(
                pynvml.nvmlDeviceGetUtilizationRates, handle, convert=utilization
            )
            device["nvmlDeviceGetTemperature"] = outcome(
                pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU, convert=int
            )
            device["nvmlDeviceGetComputeRunningProcesses"] = outcome(
                pynvml.nvmlDeviceGetComputeRunningProcesses, handle, convert=processes
            )
    finally:
        pynvml.nvmlShutdown()
    return inventory


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=2)
    sys.stdout.write("\n")
