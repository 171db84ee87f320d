"""A bfloat16 engine on a CPU without bfloat16 instructions: the device says so, and the engine's start warns once.

Whether the warning is due is read from this machine's /proc/cpuinfo, so the test holds on a CPU with the
instructions too (then no warning may appear). Its parsing is tested in tests/unit/cluster/test_devices.py."""

from __future__ import annotations

import json

import httpx

from bitinglip.cluster.devices import native_bf16
from e2e.conftest import EMBEDDING_MODEL, MODEL, Server


def test_the_cpu_device_and_the_engine_start_say_whether_bf16_is_emulated(server: Server) -> None:
    devices = httpx.get(f"{server.url}/api/cluster", timeout=30).json()["devices"]
    assert devices[-1]["kind"] == "cpu"
    assert devices[-1]["native_bf16"] == native_bf16()
    events = [json.loads(line) for line in server.log().splitlines() if '"engine.cpu_bf16_emulated"' in line]
    warned = sorted(event["model"] for event in events)
    # Both tiny models are bfloat16 checkpoints served at their own dtype: each engine warns once, or neither does.
    assert warned == (sorted([MODEL, EMBEDDING_MODEL]) if native_bf16() is False else [])
    assert all(event["level"] == "warning" and "float32" in event["hint"] for event in events)
