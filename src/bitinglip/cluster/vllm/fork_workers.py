"""On the CPU build, an engine's worker process is forked from its engine core instead of started afresh.

vLLM's CPU platform starts the worker with multiprocessing's `spawn`: a new interpreter that imports vLLM, torch
and transformers again, about half of an engine's start (docs/performance.md has the times). On a GPU, vLLM
forks its workers from the engine core, which has imported all of it already. What a fork cannot carry is a
thread pool its parent started (CUDA's, or OpenMP's once torch has run in parallel), and the engine core has
started none when it makes its worker: it has built the shared-memory ring it talks to the worker through, and
run nothing on torch. So in BitingLip's engine cores on the CPU build, vLLM is told to fork its workers.

One thing the spawn did comes with the new interpreter, and is done here in the forked worker instead, before it
runs anything: vLLM's OpenMP settings for the worker (`VLLM_CPU_OMP_THREADS_BIND`: how many threads, on which
CPUs) are environment variables set around the worker's start, which OpenMP reads once, when torch is loaded. A
forked worker has torch loaded already, so the same settings are applied through torch's thread count and the
process's CPU affinity (a spawned worker's OpenMP binds its first thread, and so every thread the worker starts
after it, to those CPUs: the same result). A worker whose engine core dies learns it as a spawned one did, from
vLLM's death pipe, and exits unlinking its own ring (`quick_exit.py`); a parent-death SIGKILL would leave the ring.

Loaded in every vLLM process as one of vLLM's "general plugins" (pyproject.toml), as `spin.py` is; it changes
nothing unless `FORK_ENV` is set (BitingLip's engines on the CPU build get it from `args.engine_env`) and the
process is a multiprocessing child (the engine core; never the server's own process, which has threads of its
own and has the engine core forked from a fork server instead: `fork_server.py`). It sets vLLM's documented
`VLLM_WORKER_MULTIPROC_METHOD` and uses multiprocessing's public after-fork hook: no private state.
tests/unit/cluster/test_fork_workers.py forks a real child through it; tests/e2e run every engine with it.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.util
import os
import re
import sys
from types import ModuleType

FORK_ENV = "_BITINGLIP_ENGINE_FORK_WORKERS"  # not BITINGLIP_*: those are settings; this one is for vLLM's processes

log = logging.getLogger(__name__)  # plain logging: this runs in vLLM's processes, whose logging is vLLM's


_registered = False


def omp_cpus(env: os._Environ[str] | dict[str, str]) -> set[int] | None:
    """The CPUs vLLM's OpenMP settings in ``env`` bind the worker to, in whichever of the forms vLLM writes
    (`OMP_PLACES={0,1}`, `GOMP_CPU_AFFINITY=0 1`, `KMP_AFFINITY=...,proclist=[0,1]`); None where none is set."""
    if places := env.get("OMP_PLACES"):
        text = places.strip().removeprefix("{").removesuffix("}")
    elif gomp := env.get("GOMP_CPU_AFFINITY"):
        text = gomp.replace(" ", ",")
    elif match := re.search(r"proclist=\[([^\]]*)\]", env.get("KMP_AFFINITY", "")):
        text = match.group(1)
    else:
        return None
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return None  # a form vLLM does not write: left to OpenMP's defaults
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus or None


def _in_forked_worker(_: ModuleType) -> None:
    """In a process just forked from an engine core, before it runs anything: vLLM's OpenMP settings, set in the
    environment for it, applied."""
    import torch

    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    cpus = omp_cpus(os.environ)
    if cpus is not None:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:  # CPUs this machine does not let it use: the spawned worker's OpenMP warned too
            log.warning("bitinglip: worker not bound to CPUs %s: %s", sorted(cpus), exc)


def register() -> bool:
    """In an engine core of BitingLip's on the CPU build: have vLLM fork its workers (it may run more than once)."""
    global _registered
    if not os.environ.get(FORK_ENV) or multiprocessing.parent_process() is None:
        return False
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
    if not _registered:
        # Keyed on this module (the registry holds its key weakly; the module outlives the process's forks).
        multiprocessing.util.register_after_fork(sys.modules[__name__], _in_forked_worker)
        _registered = True
    return True
