"""One deployment: a model served under one name by one or more engines (replicas), and its state machine.

    loading ──► ready ──► sleeping ──► loading (waking) ──► ready        (put away where the engine can sleep)
       │          ├─────► stopped ───► loading (cold start) ──► ready    (put away elsewhere, or evicted)
       │          ├─────► loading (an engine died or stalled: restarted with backoff) ──► ready | failed
       │          └─────► draining ──► stopped (removed)
       └──► failed (with its reason: never a stuck state)

Transitions that start or stop engines are run by the cluster under its one lock, so engines start one at a
time. Requests take a `Lease` on the ready replica with the fewest requests in flight; the deployment's limits
(running + queued) are checked there, so an overloaded model refuses at once instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

import msgspec

from bitinglip.cluster.placement import MemoryEstimate, Placement
from bitinglip.cluster.protocol import EngineClient, EngineFactory, ManagedEngine
from bitinglip.core import BitingLipError, ClusterSettings, DeploymentSettings, Unavailable, get_logger, parse_duration

log = get_logger(__name__)

DeploymentState = Literal["loading", "ready", "sleeping", "draining", "stopped", "failed"]
ReplicaState = Literal["loading", "ready", "sleeping", "stopped", "failed"]


def keep_alive_seconds(value: float | str, field: str = "keep_alive") -> float | None:
    """Seconds from 300, "300", "30s", "5m" or "1h"; None (never) for a negative value, as Ollama's -1."""
    seconds = parse_duration(value, field)
    return None if seconds < 0 else seconds


def error_text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, BitingLipError) else f"{type(exc).__name__}: {exc}"


class Replica:
    def __init__(self, index: int) -> None:
        self.index = index
        self.engine: ManagedEngine | None = None
        self.state: ReplicaState = "stopped"
        self.error: str | None = None
        self.restarts = 0
        self.last_restart: str | None = None  # why it was last restarted
        self.in_flight = 0
        self.queued_tokens = 0  # prompt tokens of its requests that have not had their first engine step
        self.held_bytes: int | None = None  # measured memory of its processes

    @property
    def serving(self) -> bool:
        return self.state == "ready" and self.engine is not None and self.engine.alive


class _Lease:
    __slots__ = ("_background", "_deployment", "_queued", "_released", "_replica", "_waits")

    def __init__(self, deployment: Deployment, replica: Replica, background: bool, waits: bool) -> None:
        self._deployment = deployment
        self._replica = replica
        self._released = False
        self._background = background
        self._waits = waits  # admitted past the engine's running slots: its prompt queues
        self._queued = 0
        replica.in_flight += 1
        deployment.requests += 1
        deployment.background += background

    @property
    def engine(self) -> EngineClient:
        engine = self._replica.engine
        if engine is None:
            raise Unavailable(f"model {self._deployment.name} was stopped", retry_after=5)
        return engine

    def queue_prompt(self, tokens: int) -> None:
        """The request's prompt tokens wait for the engine until `started()` (or release), if it was admitted
        past the running slots; one admitted into a free slot does not queue."""
        if self._waits:
            self._replica.queued_tokens += tokens - self._queued
            self._queued = tokens

    def started(self) -> None:
        """The engine made the request's first step: its prompt no longer waits."""
        self._replica.queued_tokens -= self._queued
        self._queued = 0

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.started()
            self._replica.in_flight -= 1
            self._deployment.background -= self._background
            self._deployment.last_used = time.time()


class Deployment:
    def __init__(
        self,
        name: str,
        spec: DeploymentSettings,
        *,
        declared: bool,
        keep_alive_s: float | None,
        engine_args: dict[str, Any],
        env: dict[str, str],
        factory: EngineFactory,
        settings: ClusterSettings,
    ) -> None:
        self.name = name
        self.spec = spec
        self.declared = declared
        self.on_demand = False  # added by a request for a registered model; removed if it never fits
        self.refusal: BitingLipError | None = None  # why it was refused before an engine started (unknown, no room)
        self.keep_alive_s = keep_alive_s
        self.engine_args = engine_args
        self.env = env
        self.factory = factory
        self.settings = settings
        self.replicas = [Replica(i) for i in range(max(1, spec.replicas))]
        self.path: Path | None = None
        self.estimate: MemoryEstimate | None = None
        self.placement: Placement | None = None
        self.state: DeploymentState = "loading"
        self.reason: str | None = "queued: engines start one at a time"
        self.restarting = False
        self.served_before = False  # has been ready at least once
        self.loading_since: float | None = time.monotonic()
        self.ready_since: float | None = None
        self.last_used = time.time()
        self.requests = 0
        self.background = 0  # leases held by background work (tasks, batches) rather than interactive requests
        self.task: asyncio.Task[None] | None = None  # the load, wake or restart under way
        self._changed = asyncio.Event()

    # -- state

    def set_state(self, state: DeploymentState, reason: str | None = None) -> None:
        if state == "loading" and self.state != "loading":
            self.loading_since = time.monotonic()
        if state == "ready":
            self.served_before = True
            self.ready_since = self.ready_since if self.state == "ready" else time.monotonic()
            self.restarting = False
        elif state != "draining":
            self.ready_since = None
        self.state, self.reason = state, reason
        log.info(f"deployment.{state}", deployment=self.name, reason=reason)
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> None:
        """Wait until the state changes, or ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    @property
    def holds_memory(self) -> bool:
        """Counts against its devices' memory: engines running or about to."""
        return self.state in ("loading", "ready", "draining") and self.placement is not None

    @property
    def idle_for(self) -> float:
        return time.time() - self.last_used if self.in_flight == 0 else 0.0

    @property
    def evictable(self) -> bool:
        return self.state in ("ready", "sleeping") and self.in_flight == 0 and self.keep_alive_s is not None

    def limits(self) -> tuple[int, int, int]:
        """(running at once, queued past that, prompt tokens waiting) per replica: the deployment's own, else
        derived from the engine's max_num_seqs and max_model_len."""
        engine = next((r.engine for r in self.replicas if r.engine is not None), None)
        seqs = engine.max_num_seqs if engine is not None and engine.max_num_seqs else 256
        context = engine.max_model_len if engine is not None and engine.max_model_len else 2048
        concurrency = self.spec.max_concurrency or seqs
        queue = self.spec.max_queue if self.spec.max_queue is not None else concurrency
        tokens = self.spec.max_queue_tokens or context * max(2, seqs // 8)
        return concurrency, queue, tokens

    # -- requests

    def slots(self) -> int | None:
        """Requests its serving engines run at once; None while none serves."""
        serving = sum(r.serving for r in self.replicas)
        return self.limits()[0] * serving if self.state == "ready" and serving else None

    def lease(self, background: bool = False) -> _Lease:
        serving = [r for r in self.replicas if r.serving]
        if self.state != "ready" or not serving:
            raise self.unavailable()
        replica = min(serving, key=lambda r: r.in_flight)
        concurrency, queue, tokens = self.limits()
        # Decided on counts alone, before the prompt is tokenized: a refusal costs next to nothing.
        if replica.in_flight >= concurrency + queue:
            raise Unavailable(
                f"model {self.name} is at its limit of {concurrency} running and {queue} queued requests per engine; "
                "retry shortly",
                retry_after=1,
                code="overloaded",
            )
        if replica.queued_tokens >= tokens:
            raise Unavailable(
                f"model {self.name} is at its limit of {tokens} prompt tokens waiting per engine; retry shortly",
                retry_after=1,
                code="overloaded",
            )
        return _Lease(self, replica, background, waits=replica.in_flight >= concurrency)

    def unavailable(self) -> Unavailable:
        if self.state == "failed":
            return Unavailable(f"model {self.name} failed: {self.reason}", retry_after=30, code="model_failed")
        if self.restarting:
            return Unavailable(
                f"model {self.name} is restarting: {self.reason}", retry_after=5, code="model_restarting"
            )
        if self.state == "draining":
            return Unavailable(f"model {self.name} is being removed", retry_after=5, code="model_draining")
        return Unavailable(f"model {self.name} is {self.state}", retry_after=5, code="model_not_ready")

    # -- engines (the cluster calls these under its lock)

    async def start_engines(self) -> None:
        """Start every replica that is not running, one after the other; raise if one fails to start."""
        assert self.path is not None
        for replica in self.replicas:
            if not replica.serving:
                await self.start_replica(replica)

    async def start_replica(self, replica: Replica) -> None:
        assert self.path is not None
        if replica.engine is not None:
            await self._stop_replica(replica)
        env = dict(self.env)
        if self.placement is not None and self.placement.kind == "gpu":
            # vLLM uses the first GPUs it sees: show it this replica's share of the ones placement chose,
            # numbered as NVML numbers them.
            per = len(self.placement.devices) // len(self.replicas)
            mine = self.placement.devices[replica.index * per : (replica.index + 1) * per]
            env |= {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, mine))}
        replica.engine = self.factory(self.path, self.name, self.engine_args, env)
        replica.state, replica.error = "loading", None
        began = time.monotonic()
        log.info("engine.starting", deployment=self.name, replica=replica.index, engine_args=self.engine_args)
        try:
            await asyncio.wait_for(replica.engine.start(), timeout=self.settings.startup_timeout_s)
        except BaseException as exc:
            replica.error = error_text(exc) if not isinstance(exc, TimeoutError) else "the engine did not start in time"
            await self._stop_replica(replica)
            replica.state = "failed"
            raise
        replica.state = "ready"
        log.info(
            "engine.ready",
            deployment=self.name,
            replica=replica.index,
            seconds=round(time.monotonic() - began, 1),
            pids=replica.engine.pids,
        )

    async def _stop_replica(self, replica: Replica) -> None:
        engine, replica.engine = replica.engine, None
        replica.state = "stopped"
        replica.held_bytes = None
        if engine is not None:
            try:
                await engine.stop()
            except Exception as exc:  # a dead engine may fail its own shutdown; it is gone either way
                log.warning("engine.stop_failed", deployment=self.name, error=error_text(exc))

    async def stop_engines(self) -> None:
        await asyncio.gather(*(self._stop_replica(r) for r in self.replicas))

    async def sleep_or_stop(self, reason: str) -> None:
        """Put away: sleep where every engine can (memory freed, woken in seconds), stop otherwise."""
        engines = [r.engine for r in self.replicas if r.engine is not None]
        if engines and all(e.can_sleep for e in engines):
            self.set_state("sleeping", reason)
            for replica in self.replicas:
                if replica.engine is not None:
                    await replica.engine.sleep()
                    replica.state = "sleeping"
            return
        self.set_state("stopped", reason)
        self.placement = None
        await self.stop_engines()

    async def wake(self) -> None:
        for replica in self.replicas:
            if replica.state == "sleeping" and replica.engine is not None:
                await replica.engine.wake_up()
                replica.state = "ready"


class ReplicaStatus(msgspec.Struct, kw_only=True):
    index: int
    state: ReplicaState
    pids: list[int]
    restarts: int
    last_restart: str | None
    error: str | None
    in_flight: int
