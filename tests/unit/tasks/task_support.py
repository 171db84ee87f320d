"""The task queue, files and batches on a real SQLite file, with a scripted handler in place of inference."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitinglip.core import Database, InvalidInput, TasksSettings, Unavailable
from bitinglip.tasks import BatchService, FileStore, TaskKind, TaskQueue, TaskStore


@dataclass
class FakeCapacity:
    """Room per model as the cluster would report it."""

    slots_by_model: dict[str, int | None] = field(default_factory=lambda: {"m": 4, "n": 4})
    interactive_by_model: dict[str, int] = field(default_factory=dict)
    # Called as the scheduler asks, in its own turn: what a test wants to happen at exactly that point.
    on_slots: Callable[[str], None] | None = None

    def slots(self, target: str) -> int | None:
        if self.on_slots is not None:
            self.on_slots(target)
        return self.slots_by_model.get(target)

    def interactive(self, target: str) -> int:
        return self.interactive_by_model.get(target, 0)

    async def known(self) -> set[str]:
        return set(self.slots_by_model)


class Work:
    """The handler: what a payload asks for happens (block until released, fail n times, a bad parameter, refuse
    as overloaded above `cap` in flight)."""

    def __init__(self) -> None:
        self.started: list[str] = []  # payload "name"s, in the order they started
        self.cancelled: list[str] = []
        self.gate = asyncio.Event()
        self.failures: dict[str, int] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    async def run(self, payload: dict[str, Any], request_id: str, owner: str = "") -> dict[str, Any]:
        name = str(payload.get("name", request_id))
        self.started.append(name)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if (cap := payload.get("cap")) is not None and self.in_flight > cap:  # the engine's own bound
                raise Unavailable("model m is at its limit of prompt tokens waiting", retry_after=1, code="overloaded")
            if payload.get("bad"):
                raise InvalidInput("`temperature` must be between 0 and 2", param="temperature")
            if self.failures.get(name, 0) < payload.get("fail", 0):
                self.failures[name] = self.failures.get(name, 0) + 1
                raise Unavailable("model m is restarting", retry_after=1, code="model_restarting")
            if payload.get("block"):
                await self.gate.wait()
            await asyncio.sleep(payload.get("sleep", 0))
            return {"name": name, "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.in_flight -= 1


def model_of(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("you must provide a model parameter", param="model")
    return model


@dataclass
class Env:
    db: Database
    settings: TasksSettings
    capacity: FakeCapacity
    work: Work
    queue: TaskQueue
    files: FileStore
    batches: BatchService

    def restart_queue(self) -> None:
        """A new queue over the same database, as a restarted server has."""
        self.queue = build_queue(self.db, self.settings, self.capacity, self.work)
        self.batches = BatchService(self.db, self.settings, self.queue, self.files)


def build_queue(db: Database, settings: TasksSettings, capacity: FakeCapacity, work: Work) -> TaskQueue:
    queue = TaskQueue(TaskStore(db), settings, capacity)
    queue.register("chat", TaskKind(run=work.run, target=model_of, endpoint="/v1/chat/completions"))
    return queue


def make_settings(tmp_path: Path, **overrides: Any) -> TasksSettings:
    base: dict[str, Any] = {"files_dir": str(tmp_path / "files"), "retry_backoff_s": 0.01, "lease_s": 30.0}
    return TasksSettings(**(base | overrides))


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll an async (or plain) check until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
