"""The cluster's watch loop: engines that died or stalled are restarted with backoff (then `failed`), idle
deployments are put away after their keep_alive, and the memory engines hold is measured.

A base class of `Cluster`, kept apart so the registry (cluster.py) and the supervision read on their own; it
uses the cluster's deployments, lock, settings and task set, which `Cluster.__init__` sets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psutil

from bitinglip.cluster.deployment import Deployment, Replica, error_text
from bitinglip.cluster.devices import Device
from bitinglip.cluster.placement import size
from bitinglip.cluster.protocol import ManagedEngine
from bitinglip.cluster.reaper import EngineRecords
from bitinglip.core import ClusterSettings, get_logger, settle_heap

log = get_logger(__name__)

WATCH_INTERVAL_S = 1.0
# On the CPU a measurement reads the engine processes' proportional set size, which makes the kernel walk their
# page tables in our process's time: ~40 ms of the API process's CPU for the tiny model's 2.7 GB. So: at the
# first watch tick after engines came or went, then every minute while no engine has requests, and at most every
# 5 minutes while one has (it was every 10 s, taken from serving and from one round in seven of a benchmark).
MEASURE_EVERY = 60  # watch ticks
MEASURE_BUSY_EVERY = 300


class Supervision:
    settings: ClusterSettings
    deployments: dict[str, Deployment]
    records: EngineRecords
    probe_devices: Callable[[], list[Device]]
    _lock: asyncio.Lock
    _overhead_seen: int
    _ticks: int
    _measured_tick: int

    @property
    def cpu(self) -> bool:
        raise NotImplementedError

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        raise NotImplementedError

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                await self._watch_once()
            except Exception:  # the watch must outlive any one bad round, or nothing is watched any more
                log.exception("cluster.watch_failed")

    async def _watch_once(self) -> None:
        self._ticks += 1
        for d in list(self.deployments.values()):
            for replica in d.replicas:
                if replica.state == "ready" and replica.engine is not None:
                    self._check_engine(d, replica, replica.engine)
            busy = d.task is not None and not d.task.done()
            if d.state == "ready" and not busy and d.keep_alive_s is not None and d.idle_for >= d.keep_alive_s:
                d.task = self._spawn(self._put_away(d, f"idle for {round(d.idle_for)} s"))
        since = self._ticks - self._measured_tick
        if since >= MEASURE_EVERY and (since >= MEASURE_BUSY_EVERY or not self._serving()):
            self._measured_tick = self._ticks
            await self._measure()

    def _serving(self) -> bool:
        return any(r.engine.unfinished_requests for d in self.deployments.values() for r in d.replicas if r.engine)

    def _check_engine(self, d: Deployment, replica: Replica, engine: ManagedEngine) -> None:
        if engine.dead:
            self._restart(d, replica, "the engine core process died")
            return
        stats = engine.stats
        if engine.unfinished_requests == 0:
            stats.busy_since = time.monotonic()
            return
        quiet_s = time.monotonic() - max(stats.updated_at, stats.busy_since)
        if quiet_s > self.settings.stall_timeout_s:
            self._restart(d, replica, f"no engine step for {round(quiet_s)} s with requests waiting")

    def _restart(self, d: Deployment, replica: Replica, reason: str) -> None:
        log.error("engine.failed", deployment=d.name, replica=replica.index, error=reason)
        replica.state, replica.error, replica.last_restart = "loading", reason, reason
        if not any(r.serving for r in d.replicas):
            d.set_state("loading", f"restarting: {reason}")
            d.restarting = True
        self._spawn(self._restart_replica(d, replica, reason))

    async def _restart_replica(self, d: Deployment, replica: Replica, reason: str) -> None:
        last = reason
        attempts = self.settings.restart_attempts
        for attempt in range(1, attempts + 1):
            await asyncio.sleep(self.settings.restart_backoff_s * 2 ** (attempt - 1))
            if self.deployments.get(d.name) is not d or d.state == "draining":
                return
            try:
                async with self._lock:
                    await d.start_replica(replica)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                last = error_text(exc)
                log.error("engine.restart_failed", deployment=d.name, attempt=attempt, error=last)
                continue
            replica.restarts += 1
            if d.state != "ready":
                d.set_state("ready")
            await self._after_change(went=True)  # the engine it replaced went
            return
        replica.state, replica.error = "failed", last
        if not any(r.serving for r in d.replicas):
            d.set_state("failed", f"{reason}; {attempts} restarts failed, the last with: {last}")

    async def _put_away(self, d: Deployment, reason: str) -> None:
        async with self._lock:
            if d.state != "ready" or d.in_flight:
                return
            await d.sleep_or_stop(reason)
        await self._after_change(went=True)

    async def _after_change(self, *, went: bool) -> None:
        """Engines came or went: rewrite the record of our engine processes (the reaper reads it), and settle the
        heap (what stays is frozen, after a full collection when engines went: core/heap.py)."""
        settle_heap(collect=went)
        self._measured_tick = self._ticks - MEASURE_BUSY_EVERY  # measure at the next watch tick, busy or not
        groups = {
            d.name: [pid for r in d.replicas if r.engine for pid in r.engine.pids] for d in self.deployments.values()
        }
        await asyncio.to_thread(self.records.write, groups)

    async def _measure(self) -> None:
        """The memory each engine holds (resident set of its processes), and the overhead engines really need."""
        replicas = [(d, r) for d in self.deployments.values() for r in d.replicas if r.engine is not None]
        gpu_use: dict[int, int] | None = None
        if replicas and not self.cpu:
            devices = await asyncio.to_thread(self.probe_devices)
            gpu_use = {p.pid: p.used_memory_bytes or 0 for x in devices for p in x.processes}
        for d, replica in replicas:
            assert replica.engine is not None
            replica.held_bytes = await asyncio.to_thread(_tree_memory, replica.engine.pids, gpu_use)
            if d.estimate and replica.held_bytes and replica.state == "ready" and d.placement:
                count = len(d.placement.devices)
                extra = (replica.held_bytes - d.estimate.weights_bytes - d.estimate.kv_cache_bytes) // count
                if extra > self._overhead_seen:
                    self._overhead_seen = extra
                    log.info("cluster.engine_overhead_measured", bytes=extra, size=size(extra), deployment=d.name)


def _tree_memory(pids: list[int], gpu_use: dict[int, int] | None) -> int | None:
    """The device memory of the processes and their children: on GPUs what NVML says they use, on the CPU
    their proportional set size (shared pages split between the processes that share them)."""
    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                if gpu_use is not None:
                    total += gpu_use.get(p.pid, 0)
                else:
                    info = p.memory_full_info()
                    total += getattr(info, "pss", info.rss)
        except psutil.Error:
            continue
    return total or None
