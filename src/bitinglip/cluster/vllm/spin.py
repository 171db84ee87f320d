"""How vLLM's engine processes wait for each other, run inside them: on the CPU build, a spin only for short waits.

vLLM's engine core and its worker process hand each step to each other through a shared-memory ring
(`vllm.distributed.device_communicators.shm_broadcast`). A reader that finds nothing new calls `sched_yield()` and
looks again, for 1 s after its last read, before it sleeps on the writer's socket notification. Under load that
never ends: the engine core spins through every step the worker computes, a whole core. On a GPU machine that core
is spare. On a CPU machine it is the core the API process, the clients and everything else run on: with two cores,
a client on the same machine got only what the spinning engine core left it, and rounds of the same load collapsed
to a third of their speed (docs/performance.md has the measurements). Sleeping on the notification alone is no
answer: vLLM's notifications can be lost (it re-reads the ring every 5 s for that reason), and a step waited 5 s.
Sleeping between looks costs the other way: a core that goes idle takes long to wake on a virtual machine, and
with one stream (steps of 3-4 ms) that cost a quarter of the tokens/s.

So a reader spins, as vLLM does, while the wait is short: until 1.5x what its last wait took (and 0.5 ms more),
when that was at most `SPIN_UP_TO_S`. A longer wait (a loaded engine's steps take tens of milliseconds) sleeps
`poll_s()` between looks instead: it sees the message at most that much later, and costs a few per cent of a core
instead of all of it.

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
SPIN_UP_TO_S = 0.005  # a wait up to this long (one stream's steps) is spun through the next time
SPIN_AT_LEAST_S = 0.0005  # after a short wait (or none: the message was there), the next spins this much more

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


def spin_budget(waited_s: float) -> float:
    """How long the next wait spins before it sleeps, given how long the last one took."""
    return 1.5 * waited_s + SPIN_AT_LEAST_S if waited_s <= SPIN_UP_TO_S else 0.0


def register() -> bool:
    """Make the ring's readers sleep `poll_s()` between looks in long waits (it may run more than once per process)."""
    seconds = poll_s()
    if seconds is None:
        return False
    version = installed_version()
    if version != WRITTEN_FOR:
        log.warning("bitinglip: engine wait setting written for vLLM %s, not %s: not applied", WRITTEN_FOR, version)
        return False
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    wait, record_read = SpinCondition.wait, SpinCondition.record_read
    if getattr(wait, MARK, None) == seconds:
        return True
    original_wait = getattr(wait, "__wrapped__", wait)
    original_record_read = getattr(record_read, "__wrapped__", record_read)

    @functools.wraps(original_wait)
    def wait_briefly_spinning(self: Any, timeout_ms: int | None = None) -> None:
        now = time.monotonic()
        if now > self.last_read + self.busy_loop_s:
            original_wait(self, timeout_ms)  # idle for a while: vLLM's own sleep on the notification
            return
        state = self.__dict__
        started = state.setdefault("_bitinglip_wait_started", now)
        if now - started < state.get("_bitinglip_spin_s", SPIN_UP_TO_S):
            os.sched_yield()  # a short wait, as the last one was: vLLM's spin
        else:
            time.sleep(seconds)

    @functools.wraps(original_record_read)
    def record_read_and_wait(self: Any) -> None:
        original_record_read(self)
        started = self.__dict__.pop("_bitinglip_wait_started", None)
        waited = 0.0 if started is None else self.last_read - started
        self._bitinglip_spin_s = spin_budget(waited)

    setattr(wait_briefly_spinning, MARK, seconds)
    SpinCondition.wait = wait_briefly_spinning
    SpinCondition.record_read = record_read_and_wait
    return True
