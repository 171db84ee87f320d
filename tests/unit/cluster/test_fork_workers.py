"""On the CPU build an engine core forks its workers (cluster/vllm/fork_workers.py): run in a real spawned "engine
core" that forks a real worker through vLLM's own choice of start method, as vLLM's executor does."""

from __future__ import annotations

import multiprocessing
import os
from importlib.metadata import entry_points
from typing import Any

import pytest

from bitinglip.cluster.vllm import engine_env, fork_workers
from bitinglip.core import ClusterSettings


def _worker(out: Any) -> None:
    import torch

    out.put((torch.get_num_threads(), sorted(os.sched_getaffinity(0))))


def _engine_core(cpu: int, out: Any) -> None:
    """What vLLM's engine core does: load the plugins, then start a worker with `get_mp_context()`, the worker's
    OpenMP settings in the environment around its start (vLLM's `OMPProcessManager.configure_omp_envs`)."""
    assert fork_workers.register()
    from vllm.utils.system_utils import get_mp_context

    context = get_mp_context()
    out.put(context.get_start_method())
    os.environ.update(OMP_NUM_THREADS="1", OMP_PLACES=f"{{{cpu}}}", OMP_PROC_BIND="true")
    worker = context.Process(target=_worker, args=(out,))
    worker.start()
    for key in ("OMP_NUM_THREADS", "OMP_PLACES", "OMP_PROC_BIND"):
        del os.environ[key]
    worker.join(60)
    out.put(worker.exitcode)


@pytest.mark.timeout(120)
def test_an_engine_core_forks_its_worker_with_vllms_thread_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fork_workers.FORK_ENV, "1")
    # What vLLM's CPU platform sets in the server before it starts an engine core.
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    spawn = multiprocessing.get_context("spawn")
    out = spawn.SimpleQueue()
    cpu = max(os.sched_getaffinity(0))  # one CPU, not all of them: the binding must be what narrowed it
    core = spawn.Process(target=_engine_core, args=(cpu, out))
    core.start()
    core.join(90)
    assert core.exitcode == 0
    assert out.get() == "fork"
    assert out.get() == (1, [cpu])  # vLLM's thread count and CPUs, applied in the forked worker
    assert out.get() == 0


def test_the_server_never_forks_what_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the server's own process (no multiprocessing parent) nothing changes: it starts engine cores afresh."""
    monkeypatch.setenv(fork_workers.FORK_ENV, "1")
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    assert fork_workers.register() is False
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


@pytest.mark.parametrize(
    ("env", "cpus"),
    [
        ({"OMP_PLACES": "{0,1,2}"}, {0, 1, 2}),  # vLLM's own form, with no OpenMP preloaded
        ({"OMP_PLACES": "{4}"}, {4}),
        ({"GOMP_CPU_AFFINITY": "0 1 3"}, {0, 1, 3}),  # libgomp preloaded
        ({"KMP_AFFINITY": "granularity=fine,explicit,proclist=[2,3]"}, {2, 3}),  # Intel's OpenMP preloaded
        ({"OMP_PLACES": "{0-3}"}, {0, 1, 2, 3}),
        ({"OMP_PLACES": "cores"}, None),  # a form vLLM does not write: OpenMP's default kept
        ({}, None),  # `VLLM_CPU_OMP_THREADS_BIND=nobind`: vLLM sets nothing
    ],
)
def test_the_cpus_vllms_openmp_settings_name(env: dict[str, str], cpus: set[int] | None) -> None:
    assert fork_workers.omp_cpus(env) == cpus


def test_bitinglips_engines_fork_their_workers_on_the_cpu_build_only() -> None:
    assert engine_env(ClusterSettings(), cpu=True)[fork_workers.FORK_ENV] == "1"
    assert fork_workers.FORK_ENV not in engine_env(ClusterSettings(), cpu=False)  # vLLM's own choice on a GPU
    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins["bitinglip_fork_workers"] == "bitinglip.cluster.vllm.fork_workers:register"
