"""One deployment: a model served under one name by one or more engines (replicas), and its state machine.

    loading ──► ready ──► sleeping ──► loading (waking) ──► ready        (put away where the engine can sleep)
       │          ├─────► stopped ───► loading (cold start) ──► ready    (put away elsewhere, or evicted)
       │          ├─────► loading (an engine died or stalled: restarted with backoff) ──► ready | failed
       │          └─────► draining ──► stopped (removed)
       └──► failed (with its reason: never a stuck state; only removing it leaves it)

`TRANSITIONS` is the whole of it: every state change goes through `Deployment.to`, which refuses one the table
does not list, and no field of a deployment is written from outside this class (the cluster and its supervisor
call its methods). Transitions that start or stop engines are run by the cluster under its one lock, so engines
start one at a time. Requests take a `Lease` on the ready replica with the fewest requests in flight; the
deployment's limits (running + queued) are checked there, so an overloaded model refuses at once instead of
queueing without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from bitinglip.cluster.placement import MemoryEstimate, Placement
from bitinglip.cluster.protocol import Adapter, EngineFactory, ManagedEngine
from bitinglip.cluster.replica import Lease, Replica, error_text
from bitinglip.core import (
    BitingLipError,
    ClusterSettings,
    DeploymentSettings,
    Feed,
    NotFound,
    Unavailable,
    get_logger,
    parse_duration,
)

log = get_logger(__name__)

DeploymentState = Literal["loading", "ready", "sleeping", "draining", "stopped", "failed"]


class TimelineEvent(msgspec.Struct, kw_only=True):
    """A deployment's state (or the step of its load) changed: loads, sleeps, evictions, restarts, failures."""

    at: str  # UTC, ISO 8601
    deployment: str
    state: DeploymentState
    reason: str | None


# The legal state changes: from each state, the states it may go to.
TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    # loaded; failed to load; a put-away one that could not come back (or the server stopped); removed
    "loading": frozenset({"ready", "failed", "stopped", "draining"}),
    # restarting a dead or stalled engine; put away (sleep, or stop, or evicted); removed
    "ready": frozenset({"loading", "sleeping", "stopped", "draining"}),
    # woken; evicted (or the server stopped); removed
    "sleeping": frozenset({"loading", "stopped", "draining"}),
    # cold start; removed
    "stopped": frozenset({"loading", "draining"}),
    # its engines stopped, and it is gone
    "draining": frozenset({"stopped"}),
    # for good: only removing it (DELETE /api/deployments/{name}) leaves it
    "failed": frozenset({"draining"}),
}

# The default models (core/settings.py) are built locally, not pulled: the command that makes each.
_MAKE_DEFAULT = {
    "tiny": "bitinglip models create-tiny",
    "tiny-embed": "bitinglip models create-tiny --embedding",
}


class IllegalTransition(RuntimeError):
    """A state change `TRANSITIONS` does not list: a bug in the caller, never the user's doing."""

    def __init__(self, name: str, current: DeploymentState, target: DeploymentState) -> None:
        super().__init__(f"deployment {name!r}: no transition from {current} to {target}")
        self.current = current
        self.target = target


def keep_alive_seconds(value: float | str, field: str = "keep_alive") -> float | None:
    """Seconds from 300, "300", "30s", "5m" or "1h"; None (never) for a negative value, as Ollama's -1."""
    seconds = parse_duration(value, field)
    return None if seconds < 0 else seconds


class Deployment:
    def __init__(
        self,
        name: str,
        spec: DeploymentSettings,
        *,
        source: str | None,
        on_demand: bool = False,
        keep_alive_s: float | None,
        engine_args: dict[str, Any],
        env: dict[str, str],
        factory: EngineFactory,
        settings: ClusterSettings,
        timeline: Feed[TimelineEvent] | None = None,
    ) -> None:
        self.name = name
        self.timeline = timeline
        self.spec = spec
        self.source = source  # the setting that declared it ("cluster.deployments[0]"); None: added at run time
        self.on_demand = on_demand  # added by a request for a registered model; removed if it never fits
        self.engine_args = engine_args
        self.env = env
        self.factory = factory
        self.settings = settings
        self.replicas = [Replica(i) for i in range(max(1, spec.replicas))]
        self._keep_alive_s = keep_alive_s
        self._refusal: BitingLipError | None = None  # why it was refused before an engine started (unknown, no room)
        self._path: Path | None = None
        self._model_name: str | None = None  # its model's registry name, once resolved
        self._estimate: MemoryEstimate | None = None
        self._placement: Placement | None = None
        self._state: DeploymentState = "loading"
        self._reason: str | None = "queued: engines start one at a time"
        self._restarting = False
        self._served_before = False  # has been ready at least once
        self._loading_since: float | None = time.monotonic()
        self._ready_since: float | None = None
        self._last_used = time.time()
        self._requests = 0
        self._background = 0  # leases held by background work (tasks, batches) rather than interactive requests
        self._task: asyncio.Task[None] | None = None  # the load, wake or put-away under way
        self._changed = asyncio.Event()

    # -- what others read

    @property
    def declared(self) -> bool:
        return self.source is not None

    @property
    def state(self) -> DeploymentState:
        return self._state

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def restarting(self) -> bool:
        """Loading again because its engines died or stalled (requests fail fast meanwhile)."""
        return self._restarting

    @property
    def refusal(self) -> BitingLipError | None:
        return self._refusal

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def model_name(self) -> str | None:
        """The registry name of its model, once resolved (adapters name their base by it)."""
        return self._model_name

    @property
    def estimate(self) -> MemoryEstimate | None:
        return self._estimate

    @property
    def placement(self) -> Placement | None:
        return self._placement

    @property
    def keep_alive_s(self) -> float | None:
        return self._keep_alive_s

    @property
    def loading_since(self) -> float | None:
        return self._loading_since

    @property
    def ready_since(self) -> float | None:
        return self._ready_since

    @property
    def last_used(self) -> float:
        return self._last_used

    @property
    def requests(self) -> int:
        return self._requests

    @property
    def background(self) -> int:
        return self._background

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    @property
    def busy(self) -> bool:
        """A load, wake or put-away is under way."""
        return self._task is not None and not self._task.done()

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    @property
    def holds_memory(self) -> bool:
        """Counts against its devices' memory: engines running or about to."""
        return self._state in ("loading", "ready", "draining") and self._placement is not None

    @property
    def idle_for(self) -> float:
        return time.time() - self._last_used if self.in_flight == 0 else 0.0

    @property
    def evictable(self) -> bool:
        return self._state in ("ready", "sleeping") and self.in_flight == 0 and self._keep_alive_s is not None

    # -- the state machine

    def to(self, state: DeploymentState, reason: str | None = None) -> None:
        """Change state; `IllegalTransition` for a change `TRANSITIONS` does not list."""
        if state not in TRANSITIONS[self._state]:
            raise IllegalTransition(self.name, self._state, state)
        now = time.monotonic()
        if state == "loading":
            self._loading_since = now
        if state == "ready":
            self._served_before = True
            self._ready_since = now
        elif state != "draining":
            self._ready_since = None
        self._restarting = False
        self._enter(state, reason)

    def progress(self, reason: str) -> None:
        """The next step of the load under way: the reason changes, the state stays `loading`."""
        if self._state != "loading":
            raise IllegalTransition(self.name, self._state, "loading")
        self._enter("loading", reason)

    def _enter(self, state: DeploymentState, reason: str | None) -> None:
        self._state, self._reason = state, reason
        if state == "failed" and self._refusal is not None and not self.declared:
            # Asked for at run time and refused before an engine started (unknown model, no room): the caller's
            # answer (a 404, a 409) says so; nothing went wrong with the server.
            log.warning("deployment.failed", deployment=self.name, reason=reason, hint=self.failure_hint())
        elif state == "failed":
            # Not a stuck state: it stays failed until removed, so say so where the operator looks, with what to do.
            log.error("deployment.failed", deployment=self.name, reason=reason, hint=self.failure_hint())
        else:
            log.info(f"deployment.{state}", deployment=self.name, reason=reason)
        if self.timeline is not None:
            at = datetime.now(UTC).isoformat(timespec="milliseconds")
            self.timeline.push(TimelineEvent(at=at, deployment=self.name, state=state, reason=reason))
        self._changed.set()
        self._changed = asyncio.Event()

    def failure_hint(self) -> str:
        """What to do about a failed deployment."""
        remove = f"`bitinglip undeploy {self.name}`"
        if self.source is None:
            return f"{remove} removes it; deploy it again once the cause is fixed"
        where = f"remove it from `{self.source}`" if "[" in self.source else f'set `{self.source} = ""`'
        until = f"/ready answers 503 until it is removed ({remove}) or the server restarts with it fixed"
        model = self.spec.model
        if isinstance(self._refusal, NotFound):
            make = _MAKE_DEFAULT.get(model) or (f"bitinglip models pull {model}" if "/" in model else None)
            fix = f"run `{make}`" if make else "register it (`bitinglip models list` shows what is)"
            return f"model `{model}` is not in the registry: {fix} or {where}; {until}"
        return f"fix the cause or {where}; {until}"

    async def changed(self, timeout: float) -> None:
        """Wait until the state changes, or ``timeout`` seconds."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that comes in the same turn as the
        # event (cpython#86296), and the caller would wait on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    # -- what the cluster records (under its lock where engines are involved)

    def busy_with(self, task: asyncio.Task[None]) -> None:
        """The load, wake or put-away now under way (a request waits for it; removing the deployment cancels it)."""
        self._task = task

    def set_keep_alive(self, seconds: float | None) -> None:
        self._keep_alive_s = seconds

    def resolved(self, path: Path, model_name: str) -> None:
        self._path, self._model_name = path, model_name

    def reconfigured(self, engine_args: dict[str, Any]) -> None:
        """Its engines are to start with other arguments (LoRA for a new adapter): placed and sized anew."""
        self.engine_args = engine_args
        self._estimate = None

    def estimated(self, estimate: MemoryEstimate, *, sized_kv_cache: bool = False) -> None:
        """Its memory, as placed; ``sized_kv_cache``: the estimate's KV cache was sized for the model, and its
        engines are started with that size."""
        self._estimate = estimate
        if sized_kv_cache:
            self.engine_args = {**self.engine_args, "kv_cache_memory_bytes": estimate.kv_cache_bytes}

    def placed(self, placement: Placement) -> None:
        self._placement = placement

    async def load_failed(self, exc: BaseException) -> None:
        """A load (or wake) failed: its engines stop. A refusal before any engine started (an unknown model, no
        room) is kept; a deployment that served before is left put away for the next request to try again."""
        refusal = exc if isinstance(exc, BitingLipError) and self._placement is None else None
        self._placement = None
        await self.stop_engines()
        if self._state != "loading":  # removed meanwhile: that has the last word
            return
        if refusal is not None and self._served_before:
            self.to("stopped", f"could not be loaded again: {error_text(exc)}")
            return
        self._refusal = refusal
        self.to("failed", error_text(exc))

    def drain(self, reason: str) -> None:
        """Take no more requests; what is under way for it stops (its engines are the cluster's to stop)."""
        if self._state == "draining":
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.to("draining", reason)

    def removed(self) -> None:
        """Its engines stopped after draining: it is gone."""
        self._placement = None
        self.to("stopped", "removed")

    # -- what the supervisor records

    def engine_failed(self, replica: Replica, reason: str) -> bool:
        """An engine died or stalled: True if its replica is to be restarted. The deployment restarts with it when
        no other replica serves; one being removed lets it go."""
        log.error("engine.failed", deployment=self.name, replica=replica.index, error=reason)
        replica.error, replica.last_restart = reason, reason
        if self._state == "draining":
            replica.state = "failed"
            return False
        replica.state = "loading"
        if self._state == "ready" and not any(r.serving for r in self.replicas):
            self.to("loading", f"restarting: {reason}")
            self._restarting = True
        return True

    @property
    def may_restart(self) -> bool:
        """Its replicas may be restarted: it serves or is coming up, and was neither put away, failed nor removed."""
        return self._state in ("ready", "loading")

    def replica_restarted(self, replica: Replica) -> None:
        replica.restarts += 1
        if self._state == "loading" and self._restarting:
            self.to("ready")

    def restart_gave_up(self, replica: Replica, reason: str, attempts: int, last: str) -> None:
        replica.state, replica.error = "failed", last
        if self._state == "loading" and self._restarting and not any(r.serving for r in self.replicas):
            self.to("failed", f"{reason}; {attempts} restarts failed, the last with: {last}")

    def measured(self, replica: Replica, engine: ManagedEngine, held_bytes: int | None) -> bool:
        """The memory ``engine`` was measured to hold; False (nothing recorded) if the replica has since let it go."""
        if replica.engine is not engine:
            return False
        replica.held_bytes = held_bytes
        return True

    # -- requests

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

    def slots(self) -> int | None:
        """Requests its serving engines run at once; None while none serves."""
        serving = sum(r.serving for r in self.replicas)
        return self.limits()[0] * serving if self._state == "ready" and serving else None

    def lease(self, background: bool = False, adapter: Adapter | None = None) -> Lease:
        serving = [r for r in self.replicas if r.serving]
        if self._state != "ready" or not serving:
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
        waits = replica.in_flight >= concurrency
        replica.in_flight += 1
        self._requests += 1
        self._background += background
        return Lease(self.name, replica, self._returned, background, waits=waits, adapter=adapter)

    def _returned(self, replica: Replica, background: bool) -> None:
        replica.in_flight -= 1
        self._background -= background
        self._last_used = time.time()

    def unavailable(self) -> Unavailable:
        if self._state == "failed":
            return Unavailable(f"model {self.name} failed: {self._reason}", retry_after=30, code="model_failed")
        if self._restarting:
            return Unavailable(
                f"model {self.name} is restarting: {self._reason}", retry_after=5, code="model_restarting"
            )
        if self._state == "draining":
            return Unavailable(f"model {self.name} is being removed", retry_after=5, code="model_draining")
        return Unavailable(f"model {self.name} is {self._state}", retry_after=5, code="model_not_ready")

    # -- engines (the cluster calls these under its lock)

    async def start_engines(self) -> None:
        """Start every replica that is not running, one after the other; raise if one fails to start."""
        for replica in self.replicas:
            if not replica.serving:
                await self.start_replica(replica)

    async def start_replica(self, replica: Replica) -> None:
        if self._path is None:
            raise RuntimeError(f"deployment {self.name!r}: an engine start before its model was resolved")
        path, env = self._path, dict(self.env)
        if self._placement is not None and self._placement.kind == "gpu":
            # vLLM uses the first GPUs it sees: show it this replica's share of the ones placement chose,
            # numbered as NVML numbers them.
            per = len(self._placement.devices) // len(self.replicas)
            mine = self._placement.devices[replica.index * per : (replica.index + 1) * per]
            env |= {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, mine))}
        await replica.start(
            lambda: self.factory(path, self.name, self.engine_args, env),
            self.name,
            self.engine_args,
            self.settings.startup_timeout_s,
        )

    async def stop_engines(self) -> None:
        await asyncio.gather(*(r.stop(self.name) for r in self.replicas))

    async def evict(self, reason: str) -> None:
        """Stopped to make room for another: no request may lease it while its engines stop."""
        self.to("stopped", reason)
        self._placement = None
        await self.stop_engines()

    async def sleep_or_stop(self, reason: str) -> None:
        """Put away: sleep where every engine can (memory freed, woken in seconds), stop otherwise."""
        engines = [r.engine for r in self.replicas if r.engine is not None]
        if engines and all(e.can_sleep for e in engines):
            self.to("sleeping", reason)
            for replica in self.replicas:
                await replica.sleep()
            return
        await self.evict(reason)

    async def wake(self) -> None:
        for replica in self.replicas:
            await replica.wake()
