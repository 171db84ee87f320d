"""The task queue: handlers registered by kind, a scheduler that keeps each target's engines busy, and the
writer that records results in small transactions.

One loop schedules: for each target (a model) with ready tasks, it claims as many as the target has room for
(`Capacity`), highest priority first, and runs each as an asyncio task. A run that ends hands its outcome to
the writer, which records outcomes together (every `FLUSH_S` or `FLUSH_MAX` of them), so the database sees
neither a transaction per token nor one at the end. Leases are renewed every third of `tasks.lease_s`, and a
run whose task was ended meanwhile by another instance (a batch cancelled there) is stopped then; a process
that dies leaves leases that expire, and their tasks run again, attempts counted. `stop()` ends the
loops, then the runs, and puts back in line whatever this queue still holds, its attempt not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from bitinglip.core import BitingLipError, Forbidden, InvalidInput, NotFound, TasksSettings, get_logger
from bitinglip.tasks.pace import Pace
from bitinglip.tasks.store import Claimed, Outcome, TaskStore, lease_owner, new_id
from bitinglip.tasks.wire import Task, TaskError, TaskSubmit

log = get_logger(__name__)

TICK_S = 1.0  # the scheduler looks again at least this often while it has work (sooner when woken)
# ... and this often once it has found none for IDLE_AFTER_S: each look is a query the serving process pays for,
# and work queued here wakes it at once anyway (what it might miss meanwhile: another instance's, a retry's).
IDLE_TICK_S = 5.0
IDLE_AFTER_S = 30.0
FLUSH_S = 0.2
FLUSH_MAX = 128
OVERLOADED_WAIT_S = 0.5  # a run the engine refused as overloaded waits this long before it is claimed again
HEADROOM = 4  # an idle target takes its slots plus a quarter more


class Capacity(Protocol):
    """What the targets (models) can take now: the cluster, seen from here."""

    def slots(self, target: str) -> int | None:
        """Requests its engines run at once now; None while it is not serving (loading, put away, unknown)."""
        ...

    def interactive(self, target: str) -> int:
        """Interactive (not background) requests in flight on it now."""
        ...

    async def known(self) -> set[str]:
        """Targets a task may name: served, or loadable on demand."""
        ...


@dataclass(frozen=True)
class TaskKind:
    """What the app registers per kind: how to run one, and which model its payload names."""

    # (payload, request id, owner) -> a JSON-encodable result; the owner is the API key that queued it ("" for none)
    run: Callable[[dict[str, Any], str, str], Awaitable[Any]]
    target: Callable[[dict[str, Any]], str]  # the payload's model; InvalidInput when it names none
    endpoint: str | None = None  # the OpenAI URL batch lines of this kind name


def error_of(exc: BaseException) -> TaskError:
    if isinstance(exc, BitingLipError):
        return TaskError(status_code=exc.status, message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    return TaskError(
        status_code=500, message=f"{type(exc).__name__}: {exc}", type="server_error", code="internal_error"
    )


def overloaded(exc: BaseException) -> bool:
    """The engine's own bounds refused it (too many requests or prompt tokens waiting): the queue sent too much."""
    return isinstance(exc, BitingLipError) and exc.code == "overloaded"


def retryable(exc: BaseException) -> bool:
    """Worth another attempt: the server's trouble (5xx, an engine gone, overload), not the request's (4xx)."""
    return not isinstance(exc, BitingLipError) or exc.status >= 500 or exc.status == 429


async def nap(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set, or ``timeout`` seconds.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that returns as if nothing happened when a
    cancel lands in the turn its inner wait ends (cpython#86296), and a loop that loses its cancel outlives
    ``TaskQueue.stop()``, which then waits on it for ever. ``asyncio.timeout`` counts cancels and keeps it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class TaskQueue:
    def __init__(self, store: TaskStore, settings: TasksSettings, capacity: Capacity) -> None:
        self.store = store
        self.settings = settings
        self.capacity = capacity
        self.kinds: dict[str, TaskKind] = {}
        self.owner = lease_owner()
        self.running: dict[str, asyncio.Task[None]] = {}  # task id -> its run
        self.per_target: dict[str, int] = {}
        self.pace = Pace()  # fewer at once on a target whose engine refused runs as overloaded
        self.on_written: Callable[[set[str]], Awaitable[None]] | None = None  # batches whose tasks just ended
        self.on_tick: Callable[[], Awaitable[None]] | None = None
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self._new_work = False

    def register(self, kind: str, handler: TaskKind) -> None:
        self.kinds[kind] = handler

    def kind_for_endpoint(self, endpoint: str) -> str | None:
        return next((k for k, h in self.kinds.items() if h.endpoint == endpoint), None)

    def target_of(self, kind: str, payload: dict[str, Any]) -> str:
        return self.kinds[kind].target(payload)

    # -- life

    async def start(self) -> None:
        recovered = await self.store.recover(at_start=True)
        if recovered:
            log.info("tasks.recovered", tasks=recovered)
        self._stopping = False
        self._new_work = True
        self._loops = [
            asyncio.create_task(self._schedule_loop(), name="tasks-schedule"),
            asyncio.create_task(self._write_loop(), name="tasks-write"),
            asyncio.create_task(self._renew_loop(), name="tasks-renew"),
        ]

    async def stop(self) -> None:
        """Stop scheduling; runs under way are put back in line (their attempt not counted) for the next start."""
        self._stopping = True
        self._wake.set()  # a loop between two awaits sees the flag and ends even without its cancel
        self._flushed.set()
        # The loops end first (the writer too: the last flush below is this method's), so that no run starts
        # after the runs are cancelled; the scheduler is the only starter of runs.
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        while runs := [run for run in self.running.values() if not run.done()]:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
        await self.flush()  # what the runs reported before they were cancelled
        # Whatever this queue still holds goes back: the cancelled runs, a run cancelled before its first step,
        # and a claim the cancel cut off between its commit and the scheduler's starting its runs.
        if released := await self.store.release(self.owner):
            log.info("tasks.released", tasks=released)

    def wake(self) -> None:
        """New work was queued: look at the table now rather than at the next tick."""
        self._new_work = True
        self._wake.set()

    # -- single tasks

    async def submit(self, body: TaskSubmit, owner: str = "", allowed: list[str] | None = None) -> tuple[Task, bool]:
        """A background task (or, for a known idempotency key, the task it made); True when made now.
        ``allowed``: the models the owner may use (None: any)."""
        if body.kind not in self.kinds:
            raise InvalidInput(
                f"unknown task kind {body.kind!r}; one of: {', '.join(sorted(self.kinds))}", param="kind"
            )
        target = self.kinds[body.kind].target(body.request)
        if target not in await self.capacity.known():
            raise NotFound(
                f"the model `{target}` does not exist or is not served here",
                param="request.model",
                code="model_not_found",
            )
        if allowed is not None and target not in allowed:
            raise Forbidden(
                f"this API key may not use the model `{target}`", param="request.model", code="model_not_allowed"
            )
        max_attempts = body.max_attempts or self.settings.max_attempts
        if max_attempts < 1:
            raise InvalidInput("max_attempts must be at least 1", param="max_attempts")
        task, made = await self.store.add(
            {
                "id": new_id("task_"),
                "owner": owner,
                "kind": body.kind,
                "target": target,
                "payload": msgspec.json.encode(body.request).decode(),
                "state": "queued",
                "priority": body.priority,
                "max_attempts": max_attempts,
                "idempotency_key": body.idempotency_key,
                "created_at": time.time(),
            }
        )
        if made:
            log.info("task.queued", task=task.id, kind=task.kind, model=target, priority=task.priority)
            self.wake()
        return task, made

    async def depth(self) -> dict[tuple[str, str], int]:
        """Tasks queued or running per (model, state), for the metrics."""
        return await self.store.depth()

    async def cancel(self, task_id: str, owner: str = "") -> Task:
        await self.flush()  # a run that has ended is recorded as it ended, not as cancelled
        task = await self.store.cancel(task_id, owner)
        self.abort([task_id])
        log.info("task.cancelled", task=task_id)
        return task

    def abort(self, task_ids: list[str]) -> None:
        """Stop runs under way here (their engine requests are aborted); their rows were ended already."""
        for task_id in task_ids:
            if (run := self.running.get(task_id)) is not None:
                run.cancel()

    # -- scheduling

    def room(self, target: str) -> int:
        """How many more background requests ``target`` takes now."""
        slots = self.capacity.slots(target)
        if slots is None:
            limit = 1  # not serving: one request asks for it (loading it on demand); the rest wait for its slots
        elif self.capacity.interactive(target) > 0:
            limit = max(1, int(slots * self.settings.batch_share))
        else:
            # A few more than the engines run at once wait inside them, so a finished request's slot is
            # taken at the engine's next step rather than after a round trip through this loop.
            limit = slots + slots // HEADROOM
        if (ceiling := self.pace.ceiling(target)) is not None:
            limit = min(limit, ceiling)
        limit = min(limit, self.settings.max_in_flight)
        return limit - self.per_target.get(target, 0)

    async def _schedule_loop(self) -> None:
        last_tick = last_recover = 0.0
        last_work = time.monotonic()  # when the queue last had work: running, ready or just queued
        ready: set[str] = set()  # targets with tasks ready to run, as of the last look at the table
        while not self._stopping:
            tick = IDLE_TICK_S if time.monotonic() - last_work >= IDLE_AFTER_S else TICK_S
            await nap(self._wake, tick)
            self._wake.clear()
            try:
                now = time.monotonic()
                if self.running or ready or self._new_work:
                    last_work = now
                if now - last_tick >= tick or self._new_work:
                    self._new_work = False
                    if now - last_tick >= tick:
                        last_tick = now
                        # A lease is long (30 s): looking for expired ones every few seconds is soon enough,
                        # and each look is a write transaction the serving process pays for.
                        if now - last_recover >= max(TICK_S, self.settings.lease_s / 4):
                            last_recover = now
                            if recovered := await self.store.recover():
                                log.warning("tasks.leases_expired", tasks=recovered)
                        if self.on_tick is not None:
                            await self.on_tick()
                    ready = set(await self.store.waiting(time.time()))
                # A run that ends only frees room: claim for the targets known to have work, without a new look.
                for target in list(ready):
                    if (n := self.room(target)) > 0:
                        claimed = await self.store.claim(target, n, self.owner, self.settings.lease_s)
                        for one in claimed:
                            self._start(one)
                        if len(claimed) < n:
                            ready.discard(target)  # nothing more ready there (retries come back on a tick)
            except Exception:
                log.exception("tasks.schedule_failed")
                await asyncio.sleep(TICK_S)

    def _start(self, claimed: Claimed) -> None:
        if self._stopping:
            return  # stop() puts it back with the others
        self.per_target[claimed.target] = self.per_target.get(claimed.target, 0) + 1
        run = asyncio.create_task(self._run(claimed), name=f"task-{claimed.id}")
        self.running[claimed.id] = run
        # Its room is given back when the asyncio task ends, not in _run's finally: a run cancelled before its
        # first step (a cancel or a stop in the turn it was claimed) never enters _run at all.
        run.add_done_callback(functools.partial(self._ended, claimed))

    def _ended(self, claimed: Claimed, run: asyncio.Task[None]) -> None:
        self.per_target[claimed.target] -= 1
        if self.running.get(claimed.id) is run:
            del self.running[claimed.id]
        self._wake.set()  # its slot is free: claim the next one now, not at the next tick

    async def _run(self, claimed: Claimed) -> None:
        began = time.monotonic()
        outcome: Outcome | None = None
        try:
            handler = self.kinds.get(claimed.kind)
            if handler is None:
                raise InvalidInput(f"no handler for task kind {claimed.kind!r} in this server")
            payload = msgspec.json.decode(claimed.payload)
            result = await handler.run(payload, f"{claimed.id}-{claimed.attempts}", claimed.owner)
            outcome = Outcome(
                id=claimed.id, attempt=claimed.attempts, state="succeeded", result=msgspec.json.encode(result).decode()
            )
            self.pace.succeeded(claimed.target)
        except Exception as exc:  # not a cancel (by stop(), which puts it back, or by a user: the row says so)
            error = msgspec.json.encode(error_of(exc)).decode()
            wait: float | None = None  # back in line after this long; None: it failed
            refused = overloaded(exc)
            if refused:
                # Not the task's fault: this queue sent more than the engine admits (long prompts fill its
                # waiting tokens before its slots). Back in line, the attempt not counted, and fewer at once.
                self.pace.refused(claimed.target, self.per_target.get(claimed.target, 1))
                wait = OVERLOADED_WAIT_S
            elif retryable(exc) and claimed.attempts < claimed.max_attempts:
                wait = self.settings.retry_backoff_s * 2 ** (claimed.attempts - 1)
                log.warning("task.retry", task=claimed.id, attempt=claimed.attempts, in_s=wait, error=str(exc))
            if wait is not None:
                outcome = Outcome(
                    id=claimed.id,
                    attempt=claimed.attempts,
                    state="queued",
                    error=error,
                    not_before=time.time() + wait,
                    counted=not refused,
                )
            else:
                outcome = Outcome(id=claimed.id, attempt=claimed.attempts, state="failed", error=error)
                if not isinstance(exc, BitingLipError):
                    log.exception("task.failed", task=claimed.id)
        finally:
            if outcome is not None:
                self._outcomes.append(outcome)
                if len(self._outcomes) >= FLUSH_MAX:
                    self._flushed.set()
            if claimed.batch_id is None:
                log.info("task.ran", task=claimed.id, seconds=round(time.monotonic() - began, 3))

    # -- writing

    async def _write_loop(self) -> None:
        while not self._stopping:
            await nap(self._flushed, FLUSH_S)
            self._flushed.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("tasks.write_failed")  # the outcomes stay for the next flush

    async def flush(self) -> None:
        """Write the outcomes of the runs that have ended (the writer does it every FLUSH_S by itself)."""
        if not self._outcomes:
            return
        outcomes, self._outcomes = self._outcomes, []
        try:
            batch_ids = await self.store.finish(outcomes, self.owner)
        except BaseException:
            self._outcomes[:0] = outcomes
            raise
        if batch_ids and self.on_written is not None:
            await self.on_written(batch_ids)

    async def _renew_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                if self.running:
                    await self._renew()
            except Exception:
                log.exception("tasks.renew_failed")

    async def _renew(self) -> None:
        """Renew this queue's leases, and stop the runs whose task is no longer this queue's: cancelled on another
        instance (a batch cancelled there), or taken by another after this lease had expired."""
        before = set(self.running)  # each claimed, so committed as running, before it is here
        held = await self.store.renew(self.owner, self.settings.lease_s)
        if gone := [task_id for task_id in before - held if task_id in self.running]:
            log.info("tasks.ended_elsewhere", tasks=len(gone))
            self.abort(gone)
