"""vLLM's Ray executor for real, as far as the CPU build goes: a Ray cluster of two nodes on this machine (a head
and a second node, each with a resource of its own, as two machines would have), a BitingLip server with
`cluster.executor = "ray"` on it, and a deployment over both nodes (pipeline parallel 2).

`/api/cluster` shows both Ray nodes. vLLM 0.32's CPU build cannot run on Ray: its engine stops in
`initialize_ray_cluster` because the CPU platform has no Ray device key (docs/scale-out.md). This test asserts
exactly that stop, named in the deployment's reason through the engine's own exception, so a vLLM release that
runs on Ray fails it here, and its deployment should then be served end to end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.conftest import Server, free_port, launch_server, stop_server, wait_ready

RAY = Path(sys.executable).parent / "ray"


class RayNodes:
    """`ray start` processes, each in its own process group (its daemons inherit it): stopped with their groups,
    not with `ray stop`, which would stop every Ray of this user on the machine."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="bl-ray-")  # short: Ray's socket paths must fit in 107 bytes
        self.groups: list[int] = []
        self.env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
        self.address = ""

    def start(self, *args: str) -> None:
        proc = subprocess.Popen(
            [str(RAY), "start", "--num-cpus=1", "--disable-usage-stats", *args],
            env=self.env, process_group=0, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.groups.append(proc.pid)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            for group in self.groups:
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(_group_alive(g) for g in self.groups):
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[RayNodes]:
    nodes = RayNodes()
    nodes.address = f"127.0.0.1:{free_port()}"
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def server(ray_nodes: RayNodes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    launched = launch_server(
        tmp_path_factory.mktemp("ray-server"),
        "",  # no model at start: the deployment over both nodes is posted by the test
        BITINGLIP_CLUSTER__EXECUTOR="ray",
        BITINGLIP_CLUSTER__RAY_ADDRESS=ray_nodes.address,
        RAY_USAGE_STATS_ENABLED="0",
    )
    try:
        # The two nodes start while the server does: it asks Ray only when asked itself.
        port = ray_nodes.address.rsplit(":", 1)[1]
        ray_nodes.start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={ray_nodes.temp_dir}",
                        '--resources={"bl_head": 1}')  # fmt: skip
        ray_nodes.start(f"--address={ray_nodes.address}", '--resources={"bl_second": 1}')
        yield wait_ready(launched)
    finally:
        stop_server(launched)


def test_the_cluster_shows_both_ray_nodes_with_their_resources(server: Server, ray_nodes: RayNodes) -> None:
    ray = httpx.get(f"{server.url}/api/cluster", timeout=60).json()["ray"]
    assert ray["address"] == ray_nodes.address and ray["error"] is None, ray
    nodes = sorted(ray["nodes"], key=lambda n: sorted(n["resources"]))
    assert [n["resources"] for n in nodes] == [{"bl_head": 1.0}, {"bl_second": 1.0}]
    assert all(n["alive"] and n["cpus"] == 1.0 and n["memory_bytes"] > 0 for n in nodes)
    assert len({n["id"] for n in nodes}) == 2


def test_a_deployment_over_both_nodes_runs_as_far_as_vllms_cpu_build_allows(
    server: Server, tiny_model_dir: Path
) -> None:
    body = {"model": str(tiny_model_dir), "name": "over-ray", "engine": {"pipeline_parallel_size": 2}}
    posted = httpx.post(f"{server.url}/api/deployments", json=body, timeout=300)
    assert posted.status_code in (200, 201, 202, 503), posted.text
    deadline = time.monotonic() + 240
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/api/deployments/over-ray", timeout=30).json()
        if state["state"] in ("ready", "failed"):
            break
        time.sleep(1)
    assert state.get("engine_args", {}).get("distributed_executor_backend") == "ray", state
    # How far it gets: vLLM's Ray executor starts, joins the cluster (RAY_ADDRESS), and stops where the CPU
    # platform has no Ray device key. The reason says so, from the engine process's own exception.
    assert state["state"] == "failed", state
    assert "current platform cpu does not support ray" in state["reason"], state["reason"]
    assert "vllm/v1/executor/ray_utils.py" in state["reason"], state["reason"]
