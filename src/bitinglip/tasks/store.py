"""The task rows and their leases: every read and write of table `tasks` goes through here.

A task is claimed by one process at a time: claiming sets `state = running`, counts the attempt and stamps
a lease (owner, expiry) that the owner renews while it runs. A result is written only by the lease it was
run under (same owner, same attempt, still running), together with the final state, in one transaction: a
task whose lease expired and was run again can never end up with two results.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa

from bitinglip.core import Conflict, Database, NotFound
from bitinglip.tasks.tables import tasks
from bitinglip.tasks.wire import Task, TaskError

SUMMARY = [c for c in tasks.c if c.name not in ("payload", "result")]


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def lease_owner() -> str:
    """This process, as its leases name it: a later process on the same host can tell whether it is gone."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _owner_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's (or unreadable): only its lease expiry says it is gone
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False  # alive (or its pid reused): wait for the lease to expire


class Claimed(msgspec.Struct, kw_only=True):
    """A task this process now runs."""

    id: str
    kind: str
    target: str
    payload: str
    attempts: int
    max_attempts: int
    priority: int
    seq: int
    batch_id: str | None
    owner: str = ""


class Outcome(msgspec.Struct, kw_only=True):
    """How one run ended, to be written with the others of its flush."""

    id: str
    attempt: int
    state: str  # succeeded, failed, or queued (to be retried)
    result: str | None = None
    error: str | None = None
    not_before: float = 0.0
    counted: bool = True  # False: a queued run that does not count as an attempt (the engine was overloaded)


async def page(
    conn: Any,
    table: sa.Table,
    query: sa.Select[Any],
    after: str | None,
    limit: int,
    missing: NotFound,
    *,
    descending: bool = True,
) -> tuple[Sequence[Any], bool]:
    """One page of ``query`` in order of arrival (a table's `seq`), past the row whose id is ``after``
    (``missing`` when there is none), and whether more rows follow: the cursor paging every list here uses."""
    if after:
        seq = (await conn.execute(sa.select(table.c.seq).where(table.c.id == after))).scalar()
        if seq is None:
            raise missing
        query = query.where(table.c.seq < seq if descending else table.c.seq > seq)
    ordered = query.order_by(table.c.seq.desc() if descending else table.c.seq)
    rows = (await conn.execute(ordered.limit(limit + 1))).all()
    return rows[:limit], len(rows) > limit


def to_task(row: Any, *, full: bool = False) -> Task:
    m = row._mapping
    error = msgspec.json.decode(m["error"], type=TaskError) if m["error"] else None
    return Task(
        id=m["id"],
        kind=m["kind"],
        model=m["target"],
        state=m["state"],
        priority=m["priority"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        idempotency_key=m["idempotency_key"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        batch_id=m["batch_id"],
        custom_id=m["custom_id"],
        request=msgspec.json.decode(m["payload"]) if full else None,
        result=msgspec.json.decode(m["result"]) if full and m["result"] else None,
        error=error,
    )


class TaskStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, row: dict[str, Any]) -> tuple[Task, bool]:
        """Insert one task; with an idempotency key already used by this owner, the existing one (and False)."""
        key = row.get("idempotency_key")
        async with self.db.engine.begin() as conn:
            if key is not None:
                found = await self._by_key(conn, row["owner"], key)
                if found is not None:
                    return found, False
                # Another submit with the key may land between that look and this insert (another instance, too):
                # the unique (owner, key) decides, without an error that would end the transaction (PostgreSQL).
                insert = (
                    self.db.upsert(tasks)
                    .values(**row)
                    .on_conflict_do_nothing(index_elements=[tasks.c.owner, tasks.c.idempotency_key])
                )
                if (await conn.execute(insert)).rowcount == 0:
                    found = await self._by_key(conn, row["owner"], key)
                    if found is None:  # the row that won was deleted in between
                        raise Conflict("the task with this idempotency key changed; try again")
                    return found, False
            else:
                await conn.execute(tasks.insert().values(**row))
        return await self.get(row["id"], row["owner"]), True

    @staticmethod
    async def _by_key(conn: Any, owner: str, key: str) -> Task | None:
        query = sa.select(tasks).where(tasks.c.owner == owner, tasks.c.idempotency_key == key)
        row = (await conn.execute(query)).first()
        return to_task(row, full=True) if row is not None else None

    async def get(self, task_id: str, owner: str, *, full: bool = True) -> Task:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id, tasks.c.owner == owner))).first()
        if row is None:
            raise NotFound(f"no task {task_id}", param="task_id", code="task_not_found")
        return to_task(row, full=full)

    async def list_tasks(
        self, owner: str, *, state: str | None, batch_id: str | None, after: str | None, limit: int
    ) -> tuple[list[Task], bool]:
        """Newest first; ``after`` is the id of the last task of the previous page."""
        query = sa.select(*SUMMARY).where(tasks.c.owner == owner)
        if state:
            query = query.where(tasks.c.state == state)
        if batch_id:
            query = query.where(tasks.c.batch_id == batch_id)
        missing = NotFound(f"no task {after} to page after", param="after", code="task_not_found")
        async with self.db.engine.connect() as conn:
            rows, more = await page(conn, tasks, query, after, limit, missing)
        return [to_task(r) for r in rows], more

    async def waiting(self, now: float) -> dict[str, int]:
        """Targets with tasks ready to run, and how many."""
        query = (
            sa.select(tasks.c.target, sa.func.count())
            .where(tasks.c.state == "queued", tasks.c.not_before <= now)
            .group_by(tasks.c.target)
        )
        async with self.db.engine.connect() as conn:
            return {target: n for target, n in (await conn.execute(query)).all()}

    async def claim(self, target: str, n: int, owner: str, lease_s: float) -> list[Claimed]:
        """Up to ``n`` of the target's ready tasks, highest priority first, oldest first within a priority."""
        now = time.time()
        chosen = (
            sa.select(tasks.c.seq)
            .where(tasks.c.state == "queued", tasks.c.target == target, tasks.c.not_before <= now)
            .order_by(tasks.c.priority.desc(), tasks.c.seq)
            .limit(n)
            # PostgreSQL: instances claiming at once each take rows the others have not locked, instead of
            # queueing on the same ones (SQLite has one writer at a time and ignores it).
            .with_for_update(skip_locked=True)
        )
        async with self.db.engine.begin() as conn:
            # Two statements, not `UPDATE ... WHERE seq IN (SELECT ... LIMIT n)`: PostgreSQL may run that subquery
            # again for each row it updates, taking more than n.
            seqs = (await conn.execute(chosen)).scalars().all()
            if not seqs:
                return []
            update = (
                tasks.update()
                # Checked again on the row as it is now: never a task another claim just took.
                .where(tasks.c.seq.in_(seqs), tasks.c.state == "queued")
                .values(
                    state="running",
                    attempts=tasks.c.attempts + 1,
                    lease_owner=owner,
                    lease_expires_at=now + lease_s,
                    started_at=sa.func.coalesce(tasks.c.started_at, now),
                )
                .returning(
                    tasks.c.id,
                    tasks.c.kind,
                    tasks.c.target,
                    tasks.c.payload,
                    tasks.c.attempts,
                    tasks.c.max_attempts,
                    tasks.c.priority,
                    tasks.c.seq,
                    tasks.c.batch_id,
                    tasks.c.owner,
                )
            )
            rows = (await conn.execute(update)).all()
        claimed = [Claimed(**r._mapping) for r in rows]
        claimed.sort(key=lambda c: (-c.priority, c.seq))
        return claimed

    async def renew(self, owner: str, lease_s: float) -> set[str]:
        """Renew ``owner``'s leases; returns the tasks it still holds (not cancelled, not taken by another)."""
        query = (
            tasks.update()
            .where(tasks.c.lease_owner == owner, tasks.c.state == "running")
            .values(lease_expires_at=time.time() + lease_s)
            .returning(tasks.c.id)
        )
        async with self.db.engine.begin() as conn:
            return {task_id for (task_id,) in (await conn.execute(query)).all()}

    async def finish(self, outcomes: Sequence[Outcome], owner: str) -> set[str]:
        """Write runs' outcomes in one transaction; returns the batches they belong to. A run whose lease is no
        longer its own (cancelled, expired and taken again) writes nothing."""
        now = time.time()
        batch_ids: set[str] = set()
        async with self.db.engine.begin() as conn:
            for o in outcomes:
                mine = (tasks.c.id == o.id, tasks.c.state == "running", tasks.c.attempts == o.attempt)
                values: dict[str, Any] = {"state": o.state, "lease_owner": None, "lease_expires_at": None}
                if o.state == "queued":
                    values |= {"not_before": o.not_before, "error": o.error}
                    if not o.counted:
                        values["attempts"] = tasks.c.attempts - 1
                else:
                    values |= {"result": o.result, "error": o.error, "finished_at": now}
                update = tasks.update().where(*mine, tasks.c.lease_owner == owner).values(**values)
                result = await conn.execute(update.returning(tasks.c.batch_id))
                batch_ids.update(b for (b,) in result.all() if b)
        return batch_ids

    async def release(self, owner: str) -> int:
        """Put the tasks ``owner`` runs back in line, their attempt not counted: its process is stopping.
        Returns how many."""
        query = (
            tasks.update()
            .where(tasks.c.lease_owner == owner, tasks.c.state == "running")
            .values(state="queued", attempts=tasks.c.attempts - 1, lease_owner=None, lease_expires_at=None)
        )
        async with self.db.engine.begin() as conn:
            return int((await conn.execute(query)).rowcount or 0)

    async def recover(self, *, at_start: bool = False) -> int:
        """Running tasks whose lease expired (or, at start, whose process is gone) go back in line, or fail
        when they have had all their attempts. Returns how many were recovered."""
        now = time.time()
        async with self.db.engine.begin() as conn:
            lost = tasks.c.lease_expires_at < now
            if at_start:
                owners = (await conn.execute(sa.select(tasks.c.lease_owner).where(tasks.c.state == "running"))).all()
                gone = [o for (o,) in set(owners) if o and _owner_gone(o)]
                lost = sa.or_(lost, tasks.c.lease_owner.in_(gone))
            running = (tasks.c.state == "running", lost)
            error = msgspec.json.encode(
                TaskError(
                    status_code=500,
                    message="the process running this task stopped before it finished, on every attempt",
                    type="server_error",
                    code="lease_expired",
                )
            ).decode()
            failed = await conn.execute(
                tasks.update()
                .where(*running, tasks.c.attempts >= tasks.c.max_attempts)
                .values(state="failed", error=error, finished_at=now, lease_owner=None, lease_expires_at=None)
            )
            requeued = await conn.execute(
                tasks.update().where(*running).values(state="queued", lease_owner=None, lease_expires_at=None)
            )
        return int(failed.rowcount or 0) + int(requeued.rowcount or 0)

    async def end_open(self, state: str, *, task_id: str | None = None, batch_id: str | None = None, owner: str) -> int:
        """Move queued and running tasks (one, or a batch's) to ``state`` (cancelled, expired)."""
        query = tasks.update().where(tasks.c.state.in_(("queued", "running")), tasks.c.owner == owner)
        if task_id is not None:
            query = query.where(tasks.c.id == task_id)
        if batch_id is not None:
            query = query.where(tasks.c.batch_id == batch_id)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                query.values(state=state, finished_at=time.time(), lease_owner=None, lease_expires_at=None)
            )
        return int(result.rowcount or 0)

    async def cancel(self, task_id: str, owner: str) -> Task:
        task = await self.get(task_id, owner, full=False)
        if task.state not in ("queued", "running"):
            raise Conflict(f"task {task_id} is already {task.state}", param="task_id", code="task_finished")
        if task.batch_id is not None:
            raise Conflict(
                f"task {task_id} is a line of batch {task.batch_id}; cancel the batch",
                param="task_id",
                code="task_in_batch",
            )
        await self.end_open("cancelled", task_id=task_id, owner=owner)
        return await self.get(task_id, owner)

    async def depth(self) -> dict[tuple[str, str], int]:
        """Tasks queued or running, per (target, state): what the queue has left to do."""
        query = (
            sa.select(tasks.c.target, tasks.c.state, sa.func.count())
            .where(tasks.c.state.in_(("queued", "running")))
            .group_by(tasks.c.target, tasks.c.state)
        )
        async with self.db.engine.connect() as conn:
            return {(target, state): n for target, state, n in (await conn.execute(query)).all()}

    async def counts(self, batch_id: str) -> dict[str, int]:
        return (await self.counts_of([batch_id])).get(batch_id, {})

    async def counts_of(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Lines per state, per batch: one query for a whole page of batches."""
        query = (
            sa.select(tasks.c.batch_id, tasks.c.state, sa.func.count())
            .where(tasks.c.batch_id.in_(batch_ids))
            .group_by(tasks.c.batch_id, tasks.c.state)
        )
        found: dict[str, dict[str, int]] = {}
        async with self.db.engine.connect() as conn:
            for batch_id, state, n in (await conn.execute(query)).all():
                found.setdefault(batch_id, {})[state] = n
        return found

    async def delete_finished(self, before: float) -> int:
        query = tasks.delete().where(
            tasks.c.state.in_(("succeeded", "failed", "cancelled", "expired")), tasks.c.finished_at < before
        )
        async with self.db.engine.begin() as conn:
            return int((await conn.execute(query)).rowcount or 0)
