"""The cluster's supervisor: a watch loop where engines that died or stalled are restarted with backoff (then
`failed`), idle deployments are put away after their keep_alive, and the memory engines hold is measured; and the
record of our engine processes, rewritten whenever engines come or go.

`Cluster` holds one `Supervisor` and gives it what it works with through its constructor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import psutil

from bitinglip.cluster.deployment import Deployment
from bitinglip.cluster.devices import Device
from bitinglip.cluster.placement import size
from bitinglip.cluster.protocol import ManagedEngine
from bitinglip.cluster.reaper import EngineRecords
from bitinglip.cluster.replica import Replica, error_text
from bitinglip.core import ClusterSettings, get_logger, settle_heap

log = get_logger(__name__)

WATCH_INTERVAL_S = 1.0
# On the CPU a measurement reads the engine processes' proportional set size, which makes the kernel walk their
# page tables in our process's time, taken from serving (docs/performance.md). So: at the first watch tick after
# engines came or went, then every minute while no engine has requests, and at most every 5 minutes while one has.
MEASURE_EVERY = 60  # watch ticks
MEASURE_BUSY_EVERY = 300


class Supervisor:
    """Watches the cluster's deployments (the live mapping it is given, read only): restarts, put-away, memory.

    Every state change goes through the deployments' own methods; engine starts and stops take the cluster's
    lock; work that outlives a watch round runs through ``spawn`` (the cluster's task set, so stopping the
    cluster cancels it).
    """

    def __init__(
        self,
        settings: ClusterSettings,
        deployments: Mapping[str, Deployment],
        *,
        lock: asyncio.Lock,
        records: EngineRecords,
        probe_devices: Callable[[], list[Device]],
        cpu: Callable[[], bool],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self.settings = settings
        self.deployments = deployments
        self.records = records
        self.probe_devices = probe_devices
        self._lock = lock
        self._cpu = cpu
        self._spawn = spawn
        self._overhead_seen = 0  # the largest overhead an engine was measured to hold, per device
        self._ticks, self._measured_tick = 0, -MEASURE_BUSY_EVERY  # the first watch tick measures

    @property
    def overhead_seen(self) -> int:
        """The most memory beyond weights and KV cache an engine was measured to hold, per device (0: none yet)."""
        return self._overhead_seen

    @property
    def ticks(self) -> int:
        return self._ticks

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                await self.watch_once()
            except Exception:  # the watch must outlive any one bad round, or nothing is watched any more
                log.exception("cluster.watch_failed")

    async def watch_once(self) -> None:
        self._ticks += 1
        for d in list(self.deployments.values()):
            for replica in d.replicas:
                if replica.state == "ready" and replica.engine is not None:
                    self._check_engine(d, replica, replica.engine)
                    if d.engine_args.get("enable_lora") and not replica.engine.dead:
                        try:
                            await replica.engine.refresh_adapters()  # which adapters it holds, for the status
                        except Exception as exc:  # a dying engine: the next round's check restarts it
                            log.warning("engine.adapters_unknown", deployment=d.name, error=str(exc))
            if d.state == "ready" and not d.busy and d.keep_alive_s is not None and d.idle_for >= d.keep_alive_s:
                d.busy_with(self._spawn(self._put_away(d, f"idle for {round(d.idle_for)} s")))
        since = self._ticks - self._measured_tick
        if since >= MEASURE_EVERY and (since >= MEASURE_BUSY_EVERY or not self._serving()):
            self._measured_tick = self._ticks
            await self.measure()

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
        if d.engine_failed(replica, reason):
            self._spawn(self._restart_replica(d, replica, reason))

    async def _restart_replica(self, d: Deployment, replica: Replica, reason: str) -> None:
        last = reason
        attempts = self.settings.restart_attempts
        for attempt in range(1, attempts + 1):
            await asyncio.sleep(self.settings.restart_backoff_s * 2 ** (attempt - 1))
            try:
                async with self._lock:
                    # Put away, failed or removed meanwhile: what did that stopped its engines for good.
                    if self.deployments.get(d.name) is not d or not d.may_restart:
                        return
                    await d.start_replica(replica)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                last = error_text(exc)
                log.error("engine.restart_failed", deployment=d.name, attempt=attempt, error=last)
                continue
            await self.engines_changed(went=True)  # recorded (the engine it replaced went) before it serves
            d.replica_restarted(replica)
            return
        d.restart_gave_up(replica, reason, attempts, last)

    async def _put_away(self, d: Deployment, reason: str) -> None:
        async with self._lock:
            if d.state != "ready" or d.in_flight:
                return
            await d.sleep_or_stop(reason)
        await self.engines_changed(went=True)

    async def engines_changed(self, *, went: bool) -> None:
        """Engines came or went: rewrite the record of our engine processes (the reaper reads it), and settle the
        heap (what stays is frozen, after a full collection when engines went: core/heap.py)."""
        settle_heap(collect=went)
        self._measured_tick = self._ticks - MEASURE_BUSY_EVERY  # measure at the next watch tick, busy or not
        groups = {
            d.name: [pid for r in d.replicas if r.engine for pid in r.engine.pids] for d in self.deployments.values()
        }
        await asyncio.to_thread(self.records.write, groups)

    async def measure(self) -> None:
        """The memory each engine holds (resident set of its processes), and the overhead engines really need.

        An engine may go (undeployed, evicted, restarted) across any await here: each is measured by the pids
        taken before the first, and its figure is kept only if its replica still holds it."""
        engines = [
            (d, r, r.engine, list(r.engine.pids)) for d in self.deployments.values() for r in d.replicas if r.engine
        ]
        gpu_use: dict[int, int] | None = None
        if engines and not self._cpu():
            devices = await asyncio.to_thread(self.probe_devices)
            gpu_use = {p.pid: p.used_memory_bytes or 0 for x in devices for p in x.processes}
        for d, replica, engine, pids in engines:
            held = await asyncio.to_thread(_tree_memory, pids, gpu_use)
            if not d.measured(replica, engine, held):
                continue
            if d.estimate and held and replica.state == "ready" and d.placement:
                count = len(d.placement.devices)
                extra = (held - d.estimate.weights_bytes - d.estimate.kv_cache_bytes - d.estimate.lora_bytes) // count
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
