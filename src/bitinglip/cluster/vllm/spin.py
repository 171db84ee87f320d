"""How vLLM's engine processes wait for each other, run inside them: on the CPU build, short sleeps, not a spin.

vLLM's engine core and its worker process hand each step to each other through a shared-memory ring
(`vllm.distributed.device_communicators.shm_broadcast`). A reader that finds nothing new calls `sched_yield()` and
looks again, for 1 s after its last read, before it sleeps on the writer's socket notification. Under load that
never ends: the engine core spins through every step the worker computes, a whole core. On a GPU machine that core
is spare. On a CPU machine it is the core the API process, the clients and everything else run on: with two cores,
a client on the same machine got only what the spinning engine core left it, and rounds of the same load collapsed
to a third of their speed (docs/performance.md has the measurements). Sleeping on the notification alone is no
answer: vLLM's notifications can be lost (it re-reads the ring every 5 s for that reason), and a step waited 5 s.

So within that 1 s the reader sleeps `poll_s()` between looks instead of yielding: it sees a new message at most
that much later (a step takes milliseconds) and costs a few per cent of a core instead of all of it.

The engine processes load vLLM's "general plugins" (entry points of the group `vllm.general_plugins`) when they
start: `register` is one (pyproject.toml). It changes nothing unless the environment sets `POLL_ENV`, which
BitingLip's engines get from `cluster.engine_poll_us` (`args.engine_env`); a `vllm serve` in the same environment
keeps vLLM's own spin. A reach into vLLM's private class, like `cpu_lora.py`: applied only to the release it was
written for, with a warning otherwise; tests/unit/cluster/test_spin.py runs it against the real ring.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from bitinglip.cluster.vllm.hooks import installed_version

WRITTEN_FOR = "0.32.0"
POLL_ENV = "_BITINGLIP_ENGINE_POLL_S"  # not BITINGLIP_*: those are settings; this one is for vLLM's processes
MARK = "bitinglip_poll_s"

log = logging.getLogger(__name__)  # plain logging: this runs in vLLM's processes, whose logging is vLLM's


def poll_s() -> float | None:
    """The sleep between looks this process's engine was given, or None (vLLM's own spin)."""
    text = os.environ.get(POLL_ENV, "")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        log.warning("bitinglip: %s=%r is not a number of seconds: vLLM's own spin kept", POLL_ENV, text)
        return None
    return value if value > 0 else None


def register() -> bool:
    """Make the ring's readers sleep `poll_s()` between looks (it may be called more than once per process)."""
    seconds = poll_s()
    if seconds is None:
        return False
    version = installed_version()
    if version != WRITTEN_FOR:
        log.warning("bitinglip: engine wait setting written for vLLM %s, not %s: not applied", WRITTEN_FOR, version)
        return False
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    wait = SpinCondition.wait
    if getattr(wait, MARK, None) == seconds:
        return True
    original = getattr(wait, "__wrapped__", wait)

    @functools.wraps(original)
    def wait_sleeping(self: Any, timeout_ms: int | None = None) -> None:
        if time.monotonic() <= self.last_read + self.busy_loop_s:
            time.sleep(seconds)  # where vLLM yields and looks again at once
        else:
            original(self, timeout_ms)  # idle for a while: vLLM's own sleep on the notification

    setattr(wait_sleeping, MARK, seconds)
    SpinCondition.wait = wait_sleeping
    return True
