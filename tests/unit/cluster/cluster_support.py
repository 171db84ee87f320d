"""What the cluster tests share: a CPU of a given size, small settings, a cluster on scripted engines, and waiting
for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bitinglip.cluster import Cluster, Device
from bitinglip.core import ClusterSettings
from doubles import FakeCatalog, ScriptedFactory

GIB = 1024**3


def cpu(free_gib: float = 60) -> Callable[[], list[Device]]:
    return lambda: [
        Device(
            kind="cpu",
            index=0,
            name="cpu",
            memory_total_bytes=64 * GIB,
            memory_used_bytes=int((64 - free_gib) * GIB),
            memory_free_bytes=int(free_gib * GIB),
            cores=2,
        )
    ]


def settings(**kw: Any) -> ClusterSettings:
    # Every engine is estimated at 1 GiB KV cache + 1 GiB overhead (no weight files): a 4.5 GiB budget holds two.
    base: dict[str, Any] = {
        "model": "",
        "kv_cache_gib": 1.0,
        "engine_overhead_gib": 1.0,
        "cpu_memory_budget_gib": 4.5,
        "restart_backoff_s": 0.01,
        "load_timeout_s": 5.0,
    }
    return ClusterSettings(**{**base, **kw})


def cluster(
    tmp_path: Path,
    factory: ScriptedFactory,
    names: tuple[str, ...] = ("a", "b", "c"),
    free_gib: float = 60,
    **kw: Any,
) -> Cluster:
    """A cluster on the CPU whose catalog registers ``names``, its engines made by ``factory``."""
    return Cluster(
        settings(**kw),
        FakeCatalog(tmp_path, list(names)),
        run_dir=tmp_path / "run",
        factory=factory,
        probe_devices=cpu(free_gib),
        cpu_platform=True,
    )


async def until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)
