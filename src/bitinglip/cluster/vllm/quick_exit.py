"""Engine processes told to stop leave at once, without the interpreter's teardown.

An engine process holds a large Python heap (torch, transformers, the model runner), and Python's teardown at
exit collects and frees it object by object, for seconds. vLLM's engine core gives its workers 5 s to exit and
the server gives the engine core 5 s, then kills it: every engine stop (a server's, a swap's, an eviction's, a
restart's) ran into that kill (docs/performance.md has the times). vLLM knows the cost: on ROCm it freezes the
heap before a clean exit so the collector skips it, which here leaves the triton bindings printing dozens of lines
of "leaked" objects at each stop.

So, in an engine process whose stop was asked for (vLLM shuts its shared-memory rings: the engine core when the
server stops it, a worker when its engine core does), the exit skips the teardown: the rings this process
created are unlinked (vLLM does it in their finalizers, which would not run), the logs flushed, and the process
ends with `os._exit(0)`. An engine process that exits for any other reason (an error: its rings shut in a
`finally` with the exception on its way out) keeps Python's ordinary exit and its exit code.

Loaded in every vLLM process as one of vLLM's "general plugins" (pyproject.toml), as `spin.py` is. It changes
nothing unless `EXIT_ENV` is set (BitingLip's engines get it from `args.engine_env`; a `vllm serve` in the same
environment keeps vLLM's exit) and the process is a multiprocessing child (the server's own process never is).
A reach into vLLM's private class (`MessageQueue.shutdown`), applied only to the release it was written for;
tests/unit/cluster/test_quick_exit.py runs it against the real ring in a real child process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.util
import os
import sys
from types import ModuleType
from typing import Any

from bitinglip.cluster.vllm.hooks import installed_version

WRITTEN_FOR = "0.32.0"
EXIT_ENV = "_BITINGLIP_ENGINE_QUICK_EXIT"  # not BITINGLIP_*: those are settings; this one is for vLLM's processes
MARK = "bitinglip_quick_exit"

log = logging.getLogger(__name__)  # plain logging: this runs in vLLM's processes, whose logging is vLLM's


# What this process has seen: whether its stop was asked for, and the shared-memory rings it created.
_asked = False
_rings: list[Any] = []


def asked_to_stop() -> bool:
    """Whether a ring shut now is a stop asked for: no exception on its way out, a plain `SystemExit` (vLLM's answer
    to SIGTERM) or an `EOFError` (a worker's pipe from its engine core closed: the engine core is stopping). Called
    inside vLLM's `finally` and `except` blocks, where `sys.exc_info()` is what is being raised or handled."""
    exc = sys.exc_info()[1]
    return exc is None or isinstance(exc, EOFError) or (isinstance(exc, SystemExit) and exc.code in (None, 0))


def exit_now() -> None:
    """At exit (among multiprocessing's exit finalizers), after a stop that was asked for: unlink this process's
    rings, flush, `os._exit(0)`."""
    if not _asked:
        return
    for ring in _rings:
        with contextlib.suppress(Exception):
            ring.shared_memory.unlink()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def register() -> bool:
    """Make an engine process whose stop was asked for exit without Python's teardown (may run more than once)."""
    if not os.environ.get(EXIT_ENV) or multiprocessing.parent_process() is None:
        return False
    version = installed_version()
    if version != WRITTEN_FOR:
        log.warning("bitinglip: quick engine exit written for vLLM %s, not %s: not applied", WRITTEN_FOR, version)
        return False
    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

    shutdown = MessageQueue.shutdown
    if getattr(shutdown, MARK, False):
        return True

    @functools.wraps(shutdown)
    def shutdown_noting_why(self: Any) -> None:
        global _asked
        if asked_to_stop():
            _asked = True
        ring = getattr(self, "buffer", None)
        if getattr(ring, "is_creator", False) and ring not in _rings:
            _rings.append(ring)
        shutdown(self)

    setattr(shutdown_noting_why, MARK, True)
    MessageQueue.shutdown = shutdown_noting_why
    # One of multiprocessing's exit finalizers, not an atexit handler: they run as the process's target returns,
    # in a spawned process as in a forked one, and a forked process (an engine core from the fork server,
    # fork_server.py; a worker from its engine core, fork_workers.py) ends with `os._exit` right after them, never
    # reaching atexit.
    multiprocessing.util.Finalize(None, exit_now, exitpriority=0)
    # A process forked from this one starts with no finalizers and this process's state: both set anew there.
    # Keyed on this module (the registry holds its key weakly; the module outlives the process's forks).
    multiprocessing.util.register_after_fork(sys.modules[__name__], _in_forked_child)
    return True


def _in_forked_child(_: ModuleType) -> None:
    global _asked
    _asked = False
    _rings.clear()
    multiprocessing.util.Finalize(None, exit_now, exitpriority=0)
