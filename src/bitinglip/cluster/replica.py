"""One engine of a deployment (a replica): its engine's start, stop, sleep and wake, and the lease a request holds
on it. The deployment decides when (cluster/deployment.py); a replica does it and keeps the counts admission reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from bitinglip.cluster.protocol import Adapter, EngineClient, ManagedEngine
from bitinglip.core import BitingLipError, Unavailable, get_logger

log = get_logger(__name__)

ReplicaState = Literal["loading", "ready", "sleeping", "stopped", "failed"]


def error_text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, BitingLipError) else f"{type(exc).__name__}: {exc}"


class Replica:
    """One engine of a deployment. Its fields are written only by its `Deployment` and its own engine methods."""

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

    async def start(
        self, make: Callable[[], ManagedEngine], deployment: str, engine_args: dict[str, Any], timeout_s: float
    ) -> None:
        """Start a new engine from ``make`` (any engine it had is stopped first); raise if it fails to start in
        ``timeout_s``, stopped and marked failed."""
        if self.engine is not None:
            await self.stop(deployment)
        engine = self.engine = make()
        self.state, self.error = "loading", None
        began = time.monotonic()
        log.info("engine.starting", deployment=deployment, replica=self.index, engine_args=engine_args)
        try:
            async with asyncio.timeout(timeout_s):
                await engine.start()
        except BaseException as exc:
            self.error = error_text(exc) if not isinstance(exc, TimeoutError) else "the engine did not start in time"
            await self.stop(deployment)
            self.state = "failed"
            raise
        self.state = "ready"
        seconds = round(time.monotonic() - began, 1)
        log.info("engine.ready", deployment=deployment, replica=self.index, seconds=seconds, pids=engine.pids)

    async def stop(self, deployment: str) -> None:
        engine, self.engine = self.engine, None
        self.state = "stopped"
        self.held_bytes = None
        if engine is not None:
            try:
                await engine.stop()
            except Exception as exc:  # a dead engine may fail its own shutdown; it is gone either way
                log.warning("engine.stop_failed", deployment=deployment, error=error_text(exc))

    async def sleep(self) -> None:
        if self.engine is not None:
            await self.engine.sleep()
            self.state = "sleeping"

    async def wake(self) -> None:
        if self.state == "sleeping" and self.engine is not None:
            await self.engine.wake_up()
            self.state = "ready"


class Lease:
    """A request's hold on a replica from admission to its end: counted in the replica's requests in flight, and
    its prompt in the tokens waiting while it queues."""

    __slots__ = ("_adapter", "_background", "_deployment", "_queued", "_released", "_replica", "_returned", "_waits")

    def __init__(
        self,
        deployment: str,
        replica: Replica,
        returned: Callable[[Replica, bool], None],
        background: bool,
        waits: bool,
        adapter: Adapter | None,
    ) -> None:
        self._deployment = deployment
        self._replica = replica
        self._returned = returned  # the deployment's count of it, on release
        self._released = False
        self._background = background
        self._waits = waits  # admitted past the engine's running slots: its prompt queues
        self._adapter = adapter  # a LoRA adapter of the deployment's model: the engine generates with it
        self._queued = 0

    @property
    def engine(self) -> EngineClient:
        engine = self._replica.engine
        if engine is None:
            raise Unavailable(f"model {self._deployment} was stopped", retry_after=5)
        return engine if self._adapter is None else engine.for_adapter(self._adapter)

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
            self._returned(self._replica, self._background)


class ReplicaStatus(msgspec.Struct, kw_only=True):
    index: int
    state: ReplicaState
    pids: list[int]
    restarts: int
    last_restart: str | None
    error: str | None
    in_flight: int
    adapters: list[str]  # the LoRA adapters its engine holds loaded
