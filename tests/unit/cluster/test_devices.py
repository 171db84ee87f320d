"""The device inventory against a recorded NVML: a fake `pynvml` answers what the recording says, errors included.

nvml_inventory_h100.json has the shape that scripts/nvml_inventory.py writes (each NVML call's outcome under the
function's name); its numbers are those of a 1x H100 80GB HBM3 serving one vLLM engine. To record a fresh one on a
GPU machine: `python3 scripts/nvml_inventory.py > tests/unit/cluster/nvml_inventory_h100.json`. The failure cases
are the recording edited in the test, so the file stays what a real machine answers.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import msgspec
import psutil
import pytest

from bitinglip.cluster.devices import Device, DeviceProcess, list_devices

RECORDING = Path(__file__).with_name("nvml_inventory_h100.json")
SCRIPT = Path(__file__).parents[3] / "scripts" / "nvml_inventory.py"


def recording() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(RECORDING.read_text())
    return loaded


def error(name: str, code: int | None) -> dict[str, Any]:
    return {"error": name, "code": code}


NOT_SUPPORTED = error("NVMLError_NotSupported", 3)


def fake_nvml(record: dict[str, Any], *, as_bytes: bool = False) -> ModuleType:
    """The pynvml functions that devices.py and the script call, answering from `record`. `as_bytes`: names and
    UUIDs come back as bytes, like pynvml before 11.5."""
    nvml = ModuleType("pynvml")

    class NVMLError(Exception):
        def __init__(self, value: int | None) -> None:
            super().__init__(value)
            self.value = value

    def answer(outcome: dict[str, Any]) -> Any:
        if "error" in outcome:
            # pynvml's errors are NVMLError_<Name> subclasses; NVMLLibraryMismatchError is a plain Exception.
            base = NVMLError if outcome["error"].startswith("NVMLError") else Exception
            raise type(outcome["error"], (base,), {})(outcome["code"])
        return outcome["value"]

    def text(value: str) -> str | bytes:
        return value.encode() if as_bytes else value

    def call(handle: int, function: str) -> Any:
        return answer(record["devices"][handle][function])

    def temperature(handle: int, sensor: int) -> int:
        assert sensor == 0  # NVML_TEMPERATURE_GPU
        return int(call(handle, "nvmlDeviceGetTemperature"))

    nvml.__dict__.update(
        NVMLError=NVMLError,
        NVML_TEMPERATURE_GPU=0,
        shutdowns=[],
        nvmlInit=lambda: answer(record["nvmlInit"]),
        nvmlShutdown=lambda: nvml.shutdowns.append(True),
        nvmlSystemGetDriverVersion=lambda: text(answer(record["nvmlSystemGetDriverVersion"])),
        nvmlDeviceGetCount=lambda: answer(record["nvmlDeviceGetCount"]),
        nvmlDeviceGetHandleByIndex=lambda i: answer(record["devices"][i]["nvmlDeviceGetHandleByIndex"]),
        nvmlDeviceGetName=lambda h: text(call(h, "nvmlDeviceGetName")),
        nvmlDeviceGetUUID=lambda h: text(call(h, "nvmlDeviceGetUUID")),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(**call(h, "nvmlDeviceGetMemoryInfo")),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(**call(h, "nvmlDeviceGetUtilizationRates")),
        nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            SimpleNamespace(**p) for p in call(h, "nvmlDeviceGetComputeRunningProcesses")
        ],
    )
    return nvml


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(record: dict[str, Any], *, as_bytes: bool = False) -> ModuleType:
        nvml = fake_nvml(record, as_bytes=as_bytes)
        monkeypatch.setitem(sys.modules, "pynvml", nvml)
        return nvml

    return install


def test_the_recorded_h100(install: Any) -> None:
    nvml = install(recording())
    gpu, cpu = list_devices()
    assert gpu.kind == "gpu"
    assert gpu.index == 0
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.uuid == "GPU-5c1e9a3f-8d2b-4e7a-b6f0-3a9d27c41e85"
    assert gpu.memory_total_bytes == 85520809984
    assert gpu.memory_used_bytes == 72496447488
    assert gpu.memory_free_bytes == 13024362496
    assert gpu.utilization_percent == 87.0
    assert gpu.temperature_c == 52
    assert gpu.cores is None
    [process] = gpu.processes
    assert (process.pid, process.used_memory_bytes) == (48213, 71940702208)  # its name: whatever has that pid here
    assert cpu.kind == "cpu"
    assert nvml.shutdowns == [True]


def test_no_driver_leaves_only_the_cpu(install: Any) -> None:
    record = recording()
    record["nvmlInit"] = error("NVMLError_LibraryNotFound", 12)  # what the script records on a machine without one
    nvml = install(record)
    assert [d.kind for d in list_devices()] == ["cpu"]
    assert nvml.shutdowns == []


def test_no_pynvml_leaves_only_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert [d.kind for d in list_devices()] == ["cpu"]


def test_a_failing_count_leaves_only_the_cpu_and_still_shuts_down(install: Any) -> None:
    record = recording()
    record["nvmlDeviceGetCount"] = error("NVMLError_Unknown", 999)
    nvml = install(record)
    assert [d.kind for d in list_devices()] == ["cpu"]
    assert nvml.shutdowns == [True]


def test_queries_a_gpu_does_not_answer_become_none(install: Any) -> None:
    record = recording()
    [device] = record["devices"]
    device["nvmlDeviceGetUUID"] = error("NVMLError_Unknown", 999)
    device["nvmlDeviceGetUtilizationRates"] = NOT_SUPPORTED
    device["nvmlDeviceGetTemperature"] = NOT_SUPPORTED
    device["nvmlDeviceGetComputeRunningProcesses"] = error("NVMLLibraryMismatchError", None)  # not an NVMLError
    install(record)
    gpu, _ = list_devices()
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_total_bytes == 85520809984
    assert (gpu.uuid, gpu.utilization_percent, gpu.temperature_c, gpu.processes) == (None, None, None, [])


def test_without_name_or_memory_a_gpu_is_still_listed(install: Any) -> None:
    record = recording()
    [device] = record["devices"]
    device["nvmlDeviceGetName"] = NOT_SUPPORTED
    device["nvmlDeviceGetMemoryInfo"] = NOT_SUPPORTED
    install(record)
    gpu, _ = list_devices()
    assert gpu.name == "GPU 0"
    assert (gpu.memory_total_bytes, gpu.memory_used_bytes, gpu.memory_free_bytes) == (0, 0, 0)
    assert gpu.uuid == "GPU-5c1e9a3f-8d2b-4e7a-b6f0-3a9d27c41e85"


def test_one_gpu_not_answering_does_not_spoil_the_others(install: Any) -> None:
    record = recording()
    [h100] = record["devices"]
    no_utilization = {**copy.deepcopy(h100), "nvmlDeviceGetUtilizationRates": NOT_SUPPORTED}
    no_utilization["nvmlDeviceGetHandleByIndex"] = {"value": 1}
    lost = {"nvmlDeviceGetHandleByIndex": error("NVMLError_GpuIsLost", 15)}
    record["devices"] = [h100, no_utilization, lost]
    record["nvmlDeviceGetCount"] = {"value": 3}
    install(record)
    first, second, cpu = list_devices()
    assert (first.index, first.utilization_percent) == (0, 87.0)
    assert (second.index, second.utilization_percent, second.temperature_c) == (1, None, 52)
    assert cpu.kind == "cpu"


def test_process_memory_nvml_does_not_tell_is_none_and_a_visible_process_is_named(install: Any) -> None:
    record = recording()
    record["devices"][0]["nvmlDeviceGetComputeRunningProcesses"] = {
        "value": [{"pid": os.getpid(), "usedGpuMemory": None}]
    }
    install(record)
    gpu, _ = list_devices()
    assert gpu.processes == [
        DeviceProcess(pid=os.getpid(), used_memory_bytes=None, name=psutil.Process(os.getpid()).name())
    ]


def test_bytes_names_from_an_old_pynvml_are_decoded(install: Any) -> None:
    install(recording(), as_bytes=True)
    gpu, _ = list_devices()
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.uuid == "GPU-5c1e9a3f-8d2b-4e7a-b6f0-3a9d27c41e85"


def test_the_cpu(install: Any) -> None:
    install(recording())
    cpu = list_devices()[-1]
    assert (cpu.kind, cpu.index, cpu.uuid, cpu.processes) == ("cpu", 0, None, [])
    assert cpu.name
    assert cpu.cores is not None and cpu.cores >= 1
    assert 0 <= cpu.memory_free_bytes <= cpu.memory_total_bytes
    assert cpu.memory_used_bytes + cpu.memory_free_bytes == cpu.memory_total_bytes


def test_devices_round_trip_through_json(install: Any) -> None:
    install(recording())
    devices = list_devices()
    assert msgspec.json.decode(msgspec.json.encode(devices), type=list[Device]) == devices


def test_the_real_nvml_of_this_machine_does_not_raise() -> None:
    devices = list_devices()  # whatever pynvml (or none) and driver (or none) this machine has
    assert devices[-1].kind == "cpu"
    assert all(d.kind == "gpu" for d in devices[:-1])


@pytest.mark.parametrize("init_fails", [False, True])
def test_the_script_writes_the_fixture_shape(install: Any, init_fails: bool) -> None:
    record = recording()
    if init_fails:
        record = {"nvmlInit": error("NVMLError_LibraryNotFound", 12), "devices": []}
    install(record, as_bytes=True)
    spec = importlib.util.spec_from_file_location("nvml_inventory", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.record() == record


X86_FLAGS = {"avx512_bf16", "amx_bf16"}


def test_bf16_from_cpuinfo_flags() -> None:
    from bitinglip.cluster.devices import cpu_flags_have_bf16

    x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse avx2 avx512f avx512_vnni{}\n\n"
    assert cpu_flags_have_bf16(x86.format(""), X86_FLAGS) is False
    assert cpu_flags_have_bf16(x86.format(" avx512_bf16"), X86_FLAGS) is True
    assert cpu_flags_have_bf16(x86.format(" amx_bf16 amx_tile"), X86_FLAGS) is True
    assert cpu_flags_have_bf16(x86.format(" avx512_bf16x"), X86_FLAGS) is False  # whole flags only
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes{}\n"
    assert cpu_flags_have_bf16(arm.format(" bf16 i8mm"), {"bf16"}) is True
    assert cpu_flags_have_bf16(arm.format(""), {"bf16"}) is False
    assert cpu_flags_have_bf16("processor\t: 0\nmodel name\t: cpu\n", X86_FLAGS) is None


def test_the_cpu_says_whether_it_has_bf16() -> None:
    from bitinglip.cluster.devices import native_bf16

    cpu = list_devices()[-1]
    assert cpu.native_bf16 == native_bf16()
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        assert cpu.native_bf16 == bool(X86_FLAGS & set(flags.split(":", 1)[1].split()))
