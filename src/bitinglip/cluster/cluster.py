"""The cluster service: which model runs on which engine, its start, health and stop.

The engine starts in the background so the HTTP server answers ``/health`` (and ``/ready`` with 503)
while the model loads. If the engine fails to start or dies later, ``on_fatal`` is called: the server
shuts down and exits non-zero instead of looking healthy with nothing behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import msgspec

from bitinglip.cluster.vllm import VllmEngine, check_engine_args, effective_engine_args
from bitinglip.core import BitingLipError, ClusterSettings, NotFound, Unavailable, get_logger

log = get_logger(__name__)

EngineState = Literal["resolving", "starting", "ready", "stalled", "failed", "stopped"]
HEALTH_INTERVAL_S = 1.0

# (model spec) -> (local path, served name); given by the app so cluster never learns about hubs or tables.
ModelResolver = Callable[[str], Awaitable[tuple[Path, str]]]


class EngineStatus(msgspec.Struct, kw_only=True):
    model: str
    path: str | None
    state: EngineState
    error: str | None
    started_in_s: float | None
    max_model_len: int | None
    unfinished_requests: int
    running: int
    waiting: int
    kv_cache_usage: float
    engine_args: dict[str, Any]


class Cluster:
    def __init__(
        self,
        settings: ClusterSettings,
        resolve_model: ModelResolver,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.resolve_model = resolve_model
        self.on_fatal = on_fatal or (lambda reason: None)
        self.engine_args = effective_engine_args(settings.engine, settings.cpu_kv_cache_gib)
        self.engine: VllmEngine | None = None
        self.state: EngineState = "resolving"
        self.error: str | None = None
        self.started_in_s: float | None = None
        self.served_name: str | None = None
        self._task: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Checks that need no I/O, run before the server binds its port."""
        check_engine_args(self.settings.engine)

    async def start(self) -> None:
        """Start the engine in the background and return at once: /health answers while the model loads."""
        self._task = asyncio.create_task(self._run(), name="cluster-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.engine is not None:
            await self.engine.stop()
        self.state = "stopped"

    async def _run(self) -> None:
        began = time.monotonic()
        try:
            path, name = await self.resolve_model(self.settings.model)
            self.served_name = name
            self.engine = VllmEngine(path, name, self.engine_args)
            self.state = "starting"
            log.info("engine.starting", model=name, path=str(path), engine_args=self.engine_args)
            await asyncio.wait_for(self.engine.start(), timeout=self.settings.startup_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = exc.message if isinstance(exc, BitingLipError) else f"{type(exc).__name__}: {exc}"
            self._fail(message)
            return
        self.started_in_s = round(time.monotonic() - began, 1)
        self.state = "ready"
        log.info(
            "engine.ready", model=self.served_name, seconds=self.started_in_s, max_model_len=self.engine.max_model_len
        )
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            if self.engine.dead:
                self._fail("the engine core process died")
                return
            self._watch_progress(self.engine)

    def _watch_progress(self, engine: VllmEngine) -> None:
        """A live process is not a working engine: with requests waiting and no step for a while, say so."""
        busy = engine.unfinished_requests > 0
        quiet_s = time.monotonic() - max(engine.stats.updated_at, engine.stats.busy_since)
        if self.state == "ready" and busy and quiet_s > self.settings.stall_timeout_s:
            self.state = "stalled"
            log.error("engine.stalled", model=self.served_name, seconds_without_progress=round(quiet_s))
        elif self.state == "stalled" and (not busy or quiet_s <= self.settings.stall_timeout_s):
            self.state = "ready"
            log.info("engine.recovered", model=self.served_name)
        if not busy:
            engine.stats.busy_since = time.monotonic()

    def _fail(self, message: str) -> None:
        self.state = "failed"
        self.error = message
        log.error("engine.failed", model=self.served_name or self.settings.model, error=message)
        self.on_fatal(message)

    @property
    def ready(self) -> bool:
        """What `/ready` answers: the engine is up, warmed up, and making progress."""
        return self.state == "ready" and self.engine is not None and self.engine.alive

    @property
    def accepting(self) -> bool:
        """Takes requests: ready, or stalled (requests queue and may still finish)."""
        return self.state in ("ready", "stalled") and self.engine is not None and self.engine.alive

    def served_models(self) -> list[str]:
        return [self.served_name] if self.accepting and self.served_name else []

    def engine_for(self, model: str) -> VllmEngine:
        """The running engine that serves `model`; NotFound or Unavailable otherwise."""
        if self.served_name is not None and model == self.served_name:
            if self.accepting and self.engine is not None:
                return self.engine
            raise Unavailable(f"model {model} is {self.state}, not ready yet", retry_after=5)
        if self.served_name is None and self.state in ("resolving", "starting"):
            raise Unavailable("the server is still loading its model", retry_after=5)
        raise NotFound(
            f"the model `{model}` does not exist or is not served here; GET /v1/models lists what is",
            param="model",
            code="model_not_found",
        )

    def status(self) -> list[EngineStatus]:
        engine = self.engine
        return [
            EngineStatus(
                model=self.served_name or self.settings.model,
                path=str(engine.model_path) if engine else None,
                state=self.state,
                error=self.error,
                started_in_s=self.started_in_s,
                max_model_len=engine.max_model_len or None if engine else None,
                unfinished_requests=engine.unfinished_requests if engine else 0,
                running=engine.stats.running if engine else 0,
                waiting=engine.stats.waiting if engine else 0,
                kv_cache_usage=engine.stats.kv_cache_usage if engine else 0.0,
                engine_args=self.engine_args,
            )
        ]
