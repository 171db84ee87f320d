"""The engine's processes on the CPU build, as the shared server runs them: each engine core is forked from the
server's fork server (cluster/vllm/fork_server.py), each engine core's worker from it (cluster/vllm/fork_workers.py),
still bound to the CPUs vLLM binds a spawned worker to; their sockets are in a folder of the engine's own
(cluster/reaper.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import psutil
import pytest

from bitinglip.cluster.reaper import ipc_root
from bitinglip.cluster.vllm.hooks import HOOKS
from e2e.conftest import Server, start_server, stop_server


def _initial_environment(process: psutil.Process) -> bytes:
    """The environment the process was started with (what a later `putenv` changes is not in it)."""
    with open(f"/proc/{process.pid}/environ", "rb") as f:
        return f.read()


def test_engine_cores_are_forked_from_the_fork_server_and_workers_from_them_bound_as_vllm_binds_them(
    server: Server,
) -> None:
    (fork_server,) = [
        p for p in psutil.Process(server.proc.pid).children() if "multiprocessing.forkserver" in " ".join(p.cmdline())
    ]
    cores = [p for p in fork_server.children() if p.name().startswith("VLLM::EngineCore")]
    assert len(cores) == 2  # the chat model's and the embedding model's
    allowed = os.sched_getaffinity(0)
    for core in cores:
        # In the fork server's process group, out of the server's: a Ctrl-C reaches them through the server only.
        assert os.getpgid(core.pid) == fork_server.pid != os.getpgid(server.proc.pid)
        # Forked only where the engine core has BitingLip's variables of its engine's start (fork_workers.FORK_ENV):
        # the fork server's child took the server's environment of that moment with it.
        (worker,) = [p for p in core.children() if p.name().startswith("VLLM::Worker")]
        # A spawned worker starts from an environment of its own, with vLLM's OpenMP settings in it; a forked one
        # keeps its engine core's, byte for byte.
        assert _initial_environment(worker) == _initial_environment(core)
        # vLLM's default binding (`VLLM_CPU_OMP_THREADS_BIND=auto`) leaves one CPU to the engine core.
        bound = set(worker.cpu_affinity())
        assert bound < allowed if len(allowed) > 1 else bound == allowed


def test_each_engines_sockets_are_in_a_folder_of_its_own(server: Server) -> None:
    folders = sorted(ipc_root(server.proc.pid).iterdir())
    assert len(folders) == 2  # one per engine
    for folder in folders:
        sockets = [p for p in folder.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
        assert sockets, folder  # vLLM's, there and not in the temp folder (removed when the server stops)


@pytest.mark.timeout(300)
def test_with_the_fork_server_off_vllm_spawns_the_engine_core_and_every_hook_still_holds(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    srv = start_server(tmp_path, tiny_model_dir, BITINGLIP_CLUSTER__FORK_SERVER="false")
    try:
        children = psutil.Process(srv.proc.pid).children()
        assert not [p for p in children if "multiprocessing.forkserver" in " ".join(p.cmdline())]
        (core,) = [p for p in children if p.name().startswith("VLLM::EngineCore")]  # spawned by the server itself
        assert [p.name() for p in core.children()] == ["VLLM::Worker"]
        (deployment,) = httpx.get(f"{srv.url}/api/deployments", timeout=10).json()["data"]
        assert deployment["hooks"] == {hook.name: True for hook in HOOKS}  # nothing was asked of the fork server
        answer = srv.openai().completions.create(model=deployment["name"], prompt="Hi", max_tokens=4)
        assert answer.usage is not None and answer.usage.completion_tokens == 4
        assert "engine.fork_server_not_used" not in srv.log() and "vllm.hook_not_taken" not in srv.log()
    finally:
        assert stop_server(srv) == 0
