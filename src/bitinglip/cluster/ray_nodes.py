"""The Ray cluster that deployments run on when `cluster.executor = "ray"`: its nodes, as `/api/cluster` shows them.

Ray is asked in a child process (`python -m bitinglip.cluster.ray_nodes ADDRESS`, Ray's public `ray.init` and
`ray.nodes()`): connecting makes the caller a driver of the cluster (its own threads, a core worker, signal
handlers), which has no place in the serving process. An answer is kept `TTL_S`; asking takes about 2 s.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import sys
import time
from typing import Any

import msgspec

from bitinglip.core import get_logger

log = get_logger(__name__)

TTL_S = 10.0
TIMEOUT_S = 30.0
STANDARD = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


class RayNode(msgspec.Struct, kw_only=True):
    id: str
    alive: bool
    address: str
    cpus: float
    gpus: float
    memory_bytes: int
    resources: dict[str, float]  # its custom ones (`ray start --resources`), e.g. a label per machine


class RayCluster(msgspec.Struct, kw_only=True):
    address: str  # as asked: `cluster.ray_address`, else RAY_ADDRESS, else "auto" (a Ray started on this machine)
    nodes: list[RayNode]
    error: str | None  # why no nodes could be read (Ray not installed, no cluster at that address)
    checked_at: float


def custom(resource: str) -> bool:
    """Not one Ray counts on every node (CPU, memory, ...) nor one it adds per node (`node:<ip>`)."""
    return resource not in STANDARD and not resource.startswith(("node:", "accelerator_type:"))


def node_of(raw: dict[str, Any]) -> RayNode:
    resources = raw.get("Resources") or {}
    return RayNode(
        id=str(raw.get("NodeID", "")),
        alive=bool(raw.get("Alive")),
        address=str(raw.get("NodeManagerAddress", "")),
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
        memory_bytes=int(resources.get("memory", 0)),
        resources={k: float(v) for k, v in resources.items() if custom(k)},
    )


class RayView:
    def __init__(self, address: str | None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or "auto"
        self._last: RayCluster | None = None
        self._lock = asyncio.Lock()

    async def cluster(self) -> RayCluster:
        async with self._lock:
            if self._last is None or time.time() - self._last.checked_at > TTL_S:
                self._last = await self._ask()
            return self._last

    async def _ask(self) -> RayCluster:
        if importlib.util.find_spec("ray") is None:
            return self._answer([], "Ray is not installed in this environment: pip install 'bitinglip[ray]'")
        env = os.environ | {"RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, self.address,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(child.communicate(), TIMEOUT_S)
        except TimeoutError:
            child.kill()
            await child.wait()
            return self._answer([], f"Ray at {self.address} did not answer in {TIMEOUT_S:.0f} s")
        if child.returncode != 0:
            last = next((line for line in reversed(err.decode(errors="replace").splitlines()) if line.strip()), "")
            log.warning("cluster.ray_unreachable", address=self.address, error=last)
            return self._answer([], f"Ray at {self.address}: {last or f'exit code {child.returncode}'}")
        return self._answer([node_of(raw) for raw in json.loads(out)], None)

    def _answer(self, nodes: list[RayNode], error: str | None) -> RayCluster:
        return RayCluster(address=self.address, nodes=nodes, error=error, checked_at=time.time())


def main() -> None:
    """The child: the nodes of the cluster at argv[1], as JSON on stdout."""
    import ray

    ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
    try:
        nodes = ray.nodes()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()
    keep = ("NodeID", "Alive", "NodeManagerAddress", "Resources")
    json.dump([{k: n.get(k) for k in keep} for n in nodes], sys.stdout)


if __name__ == "__main__":
    main()
