"""The queue: results with their state, idempotency, priorities, room per model, retries, cancel, leases."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from task_support import Env, make_settings, until

from bitinglip.core import Conflict, InvalidInput, NotFound
from bitinglip.tasks import Task, TaskSubmit
from bitinglip.tasks.tables import tasks


def chat(name: str, model: str = "m", **extra: object) -> dict[str, object]:
    return {"model": model, "name": name, "messages": [{"role": "user", "content": name}], **extra}


async def submit(env: Env, name: str, *, priority: int = 0, key: str | None = None, **extra: object) -> Task:
    task, _ = await env.queue.submit(
        TaskSubmit(kind="chat", request=chat(name, **extra), priority=priority, idempotency_key=key)
    )
    return task


async def ended(env: Env, task_id: str) -> Task:
    async def check() -> Task | None:
        task = await env.queue.store.get(task_id, "")
        return task if task.state not in ("queued", "running") else None

    result: Task = await until(check)
    return result


async def test_a_task_runs_and_its_result_is_kept_with_its_state(env: Env) -> None:
    await env.queue.start()
    task = await submit(env, "a")
    assert task.state == "queued" and task.model == "m" and task.attempts == 0
    done = await ended(env, task.id)
    assert done.state == "succeeded"
    assert done.result == {"name": "a", "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
    assert done.attempts == 1 and done.started_at is not None and done.finished_at is not None
    assert done.request is not None and done.request["name"] == "a"


async def test_the_same_idempotency_key_returns_the_same_task(env: Env) -> None:
    first, made = await env.queue.submit(TaskSubmit(kind="chat", request=chat("a"), idempotency_key="k1"))
    again, made_again = await env.queue.submit(TaskSubmit(kind="chat", request=chat("other"), idempotency_key="k1"))
    other, _ = await env.queue.submit(TaskSubmit(kind="chat", request=chat("b"), idempotency_key="k2"))
    assert made and not made_again
    assert again.id == first.id and again.request is not None and again.request["name"] == "a"
    assert other.id != first.id
    async with env.db.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar() == 2


async def test_concurrent_submits_with_one_key_make_one_task(env: Env) -> None:
    results = await asyncio.gather(
        *(env.queue.submit(TaskSubmit(kind="chat", request=chat(f"x{i}"), idempotency_key="same")) for i in range(8))
    )
    assert len({task.id for task, _ in results}) == 1
    assert sum(made for _, made in results) == 1


async def test_bad_submissions_are_refused_up_front(env: Env) -> None:
    with pytest.raises(InvalidInput, match="unknown task kind"):
        await env.queue.submit(TaskSubmit(kind="embed", request=chat("a")))
    with pytest.raises(NotFound, match="`nope` does not exist"):
        await env.queue.submit(TaskSubmit(kind="chat", request=chat("a", model="nope")))
    with pytest.raises(InvalidInput, match="model parameter"):
        await env.queue.submit(TaskSubmit(kind="chat", request={"messages": []}))


async def test_highest_priority_first_and_first_in_first_out_within_one(env: Env) -> None:
    env.capacity.slots_by_model["m"] = 1
    for name, priority in [("low1", 0), ("high1", 5), ("low2", 0), ("mid", 1), ("high2", 5)]:
        await submit(env, name, priority=priority)
    await env.queue.start()
    await until(lambda: len(env.work.started) == 5)
    assert env.work.started == ["high1", "high2", "mid", "low1", "low2"]


async def test_room_per_model_is_its_slots_and_the_batch_share_while_interactive_requests_wait(env: Env) -> None:
    env.capacity.slots_by_model["m"] = 8
    for i in range(20):
        await submit(env, f"t{i}", block=True)
    await env.queue.start()
    await until(lambda: env.work.in_flight == 10)
    await asyncio.sleep(0.3)
    assert env.work.in_flight == 10  # all the slots of an idle model and a quarter more waiting, no more
    env.capacity.interactive_by_model["m"] = 1
    assert env.queue.room("m") == 4 - 10  # batch_share 0.5 of 8 slots: none more until six end
    env.capacity.slots_by_model["m"] = None  # not serving (loading on demand): one at a time asks for it
    env.capacity.interactive_by_model["m"] = 0
    assert env.queue.room("m") == 1 - 10


async def test_a_server_error_is_retried_with_attempts_counted_and_a_bad_request_is_not(env: Env) -> None:
    await env.queue.start()
    flaky = await submit(env, "flaky", fail=2)
    bad = await submit(env, "bad", bad=True)
    hopeless = await submit(env, "hopeless", fail=10)
    done = await ended(env, flaky.id)
    assert done.state == "succeeded" and done.attempts == 3
    failed = await ended(env, bad.id)
    assert failed.state == "failed" and failed.attempts == 1
    assert failed.error is not None and failed.error.status_code == 400 and failed.error.param == "temperature"
    gave_up = await ended(env, hopeless.id)
    assert gave_up.state == "failed" and gave_up.attempts == env.settings.max_attempts
    assert gave_up.error is not None and gave_up.error.code == "model_restarting"


async def test_runs_the_engine_refuses_as_overloaded_wait_uncounted_and_the_queue_sends_fewer(env: Env) -> None:
    """Long prompts fill an engine's waiting tokens before its slots: the queue backs off instead of failing lines."""
    env.capacity.slots_by_model["m"] = 8
    submitted = [await submit(env, f"t{i}", cap=3, sleep=0.05) for i in range(30)]
    await env.queue.start()
    done = [await ended(env, t.id) for t in submitted]
    assert [t.state for t in done] == ["succeeded"] * 30
    assert all(t.attempts == 1 for t in done)  # a refusal is no attempt
    # The first claim sends its room (10: 8 slots and a quarter), 7 of them refused; after that it paces itself
    # (without the pacing: 75 refusals, each line tried again and again as fast as runs end).
    refused = len(env.work.started) - 30
    assert 7 <= refused < 25
    assert env.queue.pace.ceiling("m") is not None


async def test_cancel_aborts_a_running_task_and_refuses_a_finished_one(env: Env) -> None:
    await env.queue.start()
    task = await submit(env, "long", block=True)
    await until(lambda: env.work.in_flight == 1)
    cancelled = await env.queue.cancel(task.id)
    assert cancelled.state == "cancelled"
    await until(lambda: env.work.cancelled == ["long"])
    env.work.gate.set()
    await asyncio.sleep(0.5)  # the aborted run's flush must not overwrite the cancel
    assert (await env.queue.store.get(task.id, "")).state == "cancelled"
    with pytest.raises(Conflict, match="already cancelled"):
        await env.queue.cancel(task.id)
    queued = await submit(env, "later", block=True)  # a queued one is cancelled before it runs
    assert (await env.queue.cancel(queued.id)).state == "cancelled"


async def test_a_run_whose_task_another_instance_ended_stops_at_the_next_lease_renewal(env: Env) -> None:
    env.settings = make_settings(Path(env.settings.files_dir).parent, lease_s=0.3)  # renewed every 0.1 s
    env.restart_queue()
    await env.queue.start()
    task = await submit(env, "long", block=True)
    other = await submit(env, "other", block=True)
    await until(lambda: env.work.in_flight == 2)
    # Another instance cancels its batch: the row is ended there; this queue only learns it from the table.
    assert await env.queue.store.end_open("cancelled", task_id=task.id, owner="") == 1
    await until(lambda: env.work.cancelled == ["long"], timeout=5)
    assert task.id not in env.queue.running and other.id in env.queue.running  # its own runs go on
    env.work.gate.set()
    assert (await ended(env, other.id)).state == "succeeded"
    assert (await env.queue.store.get(task.id, "")).state == "cancelled"


async def test_a_stopping_server_puts_running_tasks_back_without_counting_the_attempt(env: Env) -> None:
    await env.queue.start()
    task = await submit(env, "long", block=True)
    await until(lambda: env.work.in_flight == 1)
    await env.queue.stop()
    back = await env.queue.store.get(task.id, "")
    assert back.state == "queued" and back.attempts == 0
    env.restart_queue()
    env.work.gate.set()
    await env.queue.start()
    done = await ended(env, task.id)
    assert done.state == "succeeded" and done.attempts == 1


async def _set_running(env: Env, task_id: str, owner: str, expires_in: float, attempts: int) -> None:
    async with env.db.engine.begin() as conn:
        await conn.execute(
            tasks.update()
            .where(tasks.c.id == task_id)
            .values(state="running", lease_owner=owner, lease_expires_at=time.time() + expires_in, attempts=attempts)
        )


async def test_expired_leases_come_back_and_are_retried_with_attempts_counted(env: Env) -> None:
    alive = f"{socket.gethostname()}:{os.getpid()}:other"  # a live process elsewhere (ours, another queue)
    lost = await submit(env, "lost")
    held = await submit(env, "held")
    spent = await submit(env, "spent")
    await _set_running(env, lost.id, alive, -1, 1)
    await _set_running(env, held.id, alive, 3600, 1)
    await _set_running(env, spent.id, alive, -1, env.settings.max_attempts)
    await env.queue.start()
    done = await ended(env, lost.id)
    assert done.state == "succeeded" and done.attempts == 2
    gone = await ended(env, spent.id)
    assert gone.state == "failed" and gone.error is not None and gone.error.code == "lease_expired"
    assert (await env.queue.store.get(held.id, "")).state == "running"  # its lease still holds


async def test_at_start_the_leases_of_a_dead_process_on_this_host_are_taken_back_at_once(env: Env) -> None:
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    task = await submit(env, "orphan")
    await _set_running(env, task.id, f"{socket.gethostname()}:{dead_pid}:abc", 3600, 1)
    await env.queue.start()
    done = await ended(
        env,
        task.id,
    )
    assert done.state == "succeeded" and done.attempts == 2


async def test_list_pages_newest_first_with_a_state_filter(env: Env) -> None:
    made = [await submit(env, f"t{i}") for i in range(5)]
    page, more = await env.queue.store.list_tasks("", state=None, batch_id=None, after=None, limit=2)
    assert [t.id for t in page] == [made[4].id, made[3].id] and more
    rest, more = await env.queue.store.list_tasks("", state="queued", batch_id=None, after=page[-1].id, limit=10)
    assert [t.id for t in rest] == [made[2].id, made[1].id, made[0].id] and not more
    none, _ = await env.queue.store.list_tasks("", state="running", batch_id=None, after=None, limit=10)
    assert none == []


async def test_another_owner_sees_nothing(env: Env) -> None:
    task, _ = await env.queue.submit(TaskSubmit(kind="chat", request=chat("a")), owner="key-1")
    with pytest.raises(NotFound):
        await env.queue.store.get(task.id, "key-2")
    assert (await env.queue.store.list_tasks("key-2", state=None, batch_id=None, after=None, limit=10))[0] == []
    assert (await env.queue.store.get(task.id, "key-1")).id == task.id


async def test_stop_ends_the_scheduler_when_a_wake_and_the_stop_land_together(env: Env) -> None:
    # On Python 3.11 `asyncio.wait_for` loses a cancel that arrives in the turn its inner wait completes
    # (cpython#86296): a scheduler waiting that way outlived the stop, which then waited on it for ever.
    # Each offset below lands the stop a few event-loop turns after a wake, across that window.
    for turns in range(6):
        await env.queue.start()
        await asyncio.sleep(0.05)  # the scheduler is waiting for work
        env.queue.wake()
        for _ in range(turns):
            await asyncio.sleep(0)
        try:
            await asyncio.wait_for(env.queue.stop(), 5)
        except TimeoutError:
            pytest.fail(f"stop() did not return when it came {turns} turns after a wake")
        env.restart_queue()


async def test_a_run_cancelled_before_its_first_step_gives_its_room_back(env: Env) -> None:
    env.capacity.slots_by_model |= {"m": 1, "n": 1}
    first = [await submit(env, "m1"), await submit(env, "n1", model="n")]

    def cancel_the_claimed_run(target: str) -> None:
        # The scheduler asks for the second model's room in the turn it claimed the first's task: that run
        # has been made but has not begun when it is cancelled (as a cancel from the API can land).
        if env.queue.running:
            env.capacity.on_slots = None
            env.queue.abort([t.id for t in first])

    env.capacity.on_slots = cancel_the_claimed_run
    await env.queue.start()
    await until(lambda: env.capacity.on_slots is None)
    assert len(env.work.started) <= 1  # the cancelled run never began
    then = [await submit(env, "m2"), await submit(env, "n2", model="n")]
    for task in then:  # each model's one slot is free again
        assert (await ended(env, task.id)).state == "succeeded"


async def test_stop_puts_back_a_task_this_queue_claimed_and_never_ran(env: Env) -> None:
    # A stop that cuts the scheduler off between a claim's commit and the start of its runs leaves a row this
    # queue holds and no run: stop() puts it back like the runs it cancels.
    task = await submit(env, "claimed")
    claimed = await env.queue.store.claim("m", 1, env.queue.owner, env.settings.lease_s)
    assert [c.id for c in claimed] == [task.id]
    await env.queue.start()
    await env.queue.stop()
    back = await env.queue.store.get(task.id, "")
    assert back.state == "queued" and back.attempts == 0
    assert env.work.started == []


async def test_claims_made_at_once_by_several_instances_never_share_a_task(env: Env) -> None:
    """Instances on one database (each its own connection pool) claiming together split the line: each task
    is taken once, and all of them are taken."""
    from bitinglip.core import Database, DbSettings
    from bitinglip.tasks import TaskStore

    submitted = {(await submit(env, f"t{i}")).id for i in range(60)}  # the queue is not started: nobody claims
    instances = [Database(DbSettings(url=env.db.url)) for _ in range(4)]
    for db in instances:
        await db.start()
    try:
        stores = [TaskStore(db) for db in instances]

        async def claim_all(store: TaskStore, owner: str) -> list[str]:
            taken: list[str] = []
            while claimed := await store.claim("m", 3, owner, lease_s=30.0):
                taken += [c.id for c in claimed]
            return taken

        taken = await asyncio.gather(*(claim_all(store, f"host:{i}:x") for i, store in enumerate(stores)))
    finally:
        for db in instances:
            await db.stop()
    every = [task_id for one in taken for task_id in one]
    assert sorted(every) == sorted(submitted)  # each exactly once
    async with env.db.engine.connect() as conn:
        owners = (await conn.execute(sa.select(tasks.c.lease_owner).distinct())).scalars().all()
    if env.db.dialect == "postgresql":  # SQLite takes one writer at a time: there one claimer may take all
        assert len(owners) >= 2  # they really ran at once


async def test_an_idle_queue_looks_at_the_table_less_often_and_new_work_still_starts_at_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitinglip.tasks import queue

    monkeypatch.setattr(queue, "TICK_S", 0.02)
    monkeypatch.setattr(queue, "IDLE_AFTER_S", 1.0)
    monkeypatch.setattr(queue, "IDLE_TICK_S", 0.5)
    looks = 0
    real = env.queue.store.waiting

    async def counted(now: float) -> dict[str, int]:
        nonlocal looks
        looks += 1
        return await real(now)

    monkeypatch.setattr(env.queue.store, "waiting", counted)
    await env.queue.start()
    await asyncio.sleep(1.2)  # past IDLE_AFTER_S with nothing to do
    before = looks
    await asyncio.sleep(1.5)
    assert looks - before <= 5  # every 0.5 s: 3 or 4 looks, where every 0.02 s would be dozens
    task = await submit(env, "a")  # queued here: it wakes the scheduler
    assert (await ended(env, task.id)).state == "succeeded"
    before = looks
    await asyncio.sleep(0.15)  # work was seen: the queue looks at its busy pace again
    assert looks - before >= 3
