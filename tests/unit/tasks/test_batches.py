"""Batches: the input checked up front with line numbers, output files in OpenAI's format, cancel, expiry,
a restart in the middle, retention."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from typing import Any

import pytest
import sqlalchemy as sa
from task_support import Env, until

from bitinglip.core import Conflict, InvalidInput, NotFound
from bitinglip.tasks import Batch, BatchCreate
from bitinglip.tasks.tables import batches, files, tasks
from bitinglip.tasks.wire import ExpiresAfter

URL = "/v1/chat/completions"


def line(custom_id: str, model: str = "m", url: str = URL, method: str = "POST", **body: Any) -> str:
    payload = {"model": model, "name": custom_id, "messages": [{"role": "user", "content": custom_id}], **body}
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": payload})


async def upload(env: Env, lines: list[str], purpose: str = "batch") -> str:
    made = await env.files.upload(io.BytesIO("\n".join(lines).encode() + b"\n"), "in.jsonl", purpose)
    return made.id


async def create(env: Env, lines: list[str], window: str = "24h", **extra: Any) -> Batch:
    file_id = await upload(env, lines)
    return await env.batches.create(BatchCreate(input_file_id=file_id, endpoint=URL, completion_window=window, **extra))


async def ended(env: Env, batch_id: str, timeout: float = 15) -> Batch:
    async def check() -> Batch | None:
        batch = await env.batches.get(batch_id)
        return batch if batch.status in ("completed", "failed", "expired", "cancelled") else None

    result: Batch = await until(check, timeout)
    return result


def content(env: Env, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in env.files.path(file_id).read_text().splitlines()]


async def test_a_batch_runs_every_line_once_and_writes_openai_output_and_error_files(env: Env) -> None:
    await env.queue.start()
    lines = [line(f"r{i}") for i in range(30)] + [line("bad", bad=True)]
    expiry = ExpiresAfter(anchor="created_at", seconds=7200)
    batch = await create(env, lines, metadata={"job": "nightly"}, output_expires_after=expiry)
    assert batch.status == "in_progress" and batch.request_counts.total == 31
    done = await ended(env, batch.id)
    assert done.status == "completed" and done.metadata == {"job": "nightly"}
    assert (done.request_counts.completed, done.request_counts.failed) == (30, 1)
    assert done.completed_at is not None and done.in_progress_at is not None and done.finalizing_at is not None
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (90, 150)
    output = content(env, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(30)]  # in input order, each once
    first = output[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["body"]["name"] == "r0"
    errors = content(env, done.error_file_id)
    assert len(errors) == 1 and errors[0]["custom_id"] == "bad"
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "temperature"
    out_file = await env.files.get(done.output_file_id or "")
    assert out_file.purpose == "batch_output" and out_file.bytes == env.files.path(out_file.id).stat().st_size
    assert out_file.expires_at is not None and abs(out_file.expires_at - out_file.created_at - 7200) <= 1


@pytest.mark.parametrize(
    ("bad_line", "code", "param"),
    [
        ("{not json", "invalid_json_line", None),
        ('["a list"]', "invalid_json_line", None),
        (json.dumps({"method": "POST", "url": URL, "body": {"model": "m"}}), "missing_required_parameter", "custom_id"),
        (line("r0"), "duplicate_custom_id", "custom_id"),
        (line("x", method="GET"), "invalid_method", "method"),
        (line("x", url="/v1/completions"), "mismatched_endpoint", "url"),
        (line("x", model="nope"), "model_not_found", "body.model"),
        (json.dumps({"custom_id": "x", "method": "POST", "url": URL}), "missing_required_parameter", "body"),
        (
            json.dumps({"custom_id": "x", "method": "POST", "url": URL, "body": {}}),
            "missing_required_parameter",
            "body.model",
        ),
    ],
)
async def test_a_wrong_input_line_fails_the_batch_naming_its_line(
    env: Env, bad_line: str, code: str, param: str | None
) -> None:
    batch = await create(env, [line("r0"), line("r1"), bad_line, line("r3")])
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None
    [error] = batch.errors.data
    assert (error.code, error.line, error.param) == (code, 3, param)
    assert "line 3" in error.message
    async with env.db.engine.connect() as conn:  # nothing of a failed batch is queued
        assert (await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar() == 0


async def test_a_line_for_a_model_its_key_may_not_use_fails_the_batch(env: Env) -> None:
    async def models_of(owner: str) -> list[str] | None:
        return ["m"] if owner == "" else None

    env.batches.models_of = models_of
    batch = await create(env, [line("r0"), line("r1", model="n")])  # both served here
    assert batch.status == "failed" and batch.errors is not None
    [error] = batch.errors.data
    assert (error.code, error.line, error.param) == ("model_not_allowed", 2, "body.model")


async def test_too_many_lines_or_bytes_and_an_empty_file_fail_the_batch(env: Env, tmp_path: Any) -> None:
    from dataclasses import replace  # noqa: F401  (structs below)

    import msgspec

    small = msgspec.structs.replace(env.settings, max_batch_lines=3, max_file_bytes=10_000)
    env.batches.settings = small
    many = await create(env, [line(f"r{i}") for i in range(4)])
    assert many.status == "failed" and many.errors is not None
    assert many.errors.data[0].code == "too_many_lines" and many.errors.data[0].line == 4
    env.files.settings = msgspec.structs.replace(env.settings, max_file_bytes=10**9)
    big = await create(env, [line(f"r{i}", pad="x" * 5000) for i in range(3)])
    assert big.status == "failed" and big.errors is not None and big.errors.data[0].code == "file_too_large"
    empty = await create(env, ["", "  "])
    assert empty.status == "failed" and empty.errors is not None and empty.errors.data[0].code == "empty_file"


async def test_a_bad_endpoint_window_metadata_or_file_is_refused_at_once(env: Env) -> None:
    file_id = await upload(env, [line("r0")])
    with pytest.raises(InvalidInput, match="not supported") as bad:
        await env.batches.create(BatchCreate(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"))
    assert bad.value.param == "endpoint"
    with pytest.raises(InvalidInput, match="completion_window"):
        await env.batches.create(BatchCreate(input_file_id=file_id, endpoint=URL, completion_window="30d"))
    with pytest.raises(InvalidInput, match="completion_window"):
        await env.batches.create(BatchCreate(input_file_id=file_id, endpoint=URL, completion_window="soon"))
    with pytest.raises(InvalidInput, match="metadata"):
        meta = {f"k{i}": "v" for i in range(17)}
        await env.batches.create(
            BatchCreate(input_file_id=file_id, endpoint=URL, completion_window="24h", metadata=meta)
        )
    with pytest.raises(NotFound):
        await env.batches.create(BatchCreate(input_file_id="file-nope", endpoint=URL, completion_window="24h"))
    with pytest.raises(InvalidInput, match="purpose"):
        await env.files.upload(io.BytesIO(b"{}"), "x.jsonl", "fine-tune")


async def test_cancel_ends_the_open_lines_aborts_the_running_ones_and_keeps_what_finished(env: Env) -> None:
    env.capacity.slots_by_model["m"] = 2
    await env.queue.start()
    lines = [line(f"quick{i}") for i in range(3)] + [line(f"slow{i}", block=True) for i in range(5)]
    batch = await create(env, lines)
    await until(lambda: env.work.in_flight == 2 and len(env.work.started) == 5)
    cancelled = await env.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelling_at and cancelled.cancelled_at
    await until(lambda: len(env.work.cancelled) == 2)  # the two running lines were aborted
    assert cancelled.request_counts.completed == 3
    assert [o["custom_id"] for o in content(env, cancelled.output_file_id)] == ["quick0", "quick1", "quick2"]
    errors = content(env, cancelled.error_file_id)
    assert [e["custom_id"] for e in errors] == [f"slow{i}" for i in range(5)]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"} and errors[0]["response"] is None
    with pytest.raises(Conflict):
        done = await create(env, [line("a")])
        await ended(env, done.id)
        await env.batches.cancel(done.id)


async def test_a_batch_past_its_window_expires_with_its_finished_lines_kept(env: Env) -> None:
    env.capacity.slots_by_model["m"] = 1
    await env.queue.start()
    batch = await create(env, [line("fast"), line("stuck", block=True), line("never")], window="1s")
    done = await ended(env, batch.id, timeout=10)
    assert done.status == "expired" and done.expired_at is not None
    assert [o["custom_id"] for o in content(env, done.output_file_id)] == ["fast"]
    errors = content(env, done.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("stuck", "batch_expired"),
        ("never", "batch_expired"),
    ]


async def test_a_restart_in_the_middle_finishes_every_line_exactly_once(env: Env) -> None:
    """What a crash leaves: some lines done, some running under a dead process's lease, some queued."""
    lines = [line(f"r{i}") for i in range(40)]
    batch = await create(env, lines)
    dead = f"{socket.gethostname()}:{2**22 + 777}:dead"
    async with env.db.engine.begin() as conn:
        rows = (await conn.execute(sa.select(tasks.c.id, tasks.c.line).order_by(tasks.c.line))).all()
        done_ids = [r.id for r in rows[:10]]
        running_ids = [r.id for r in rows[10:20]]
        await conn.execute(
            tasks.update()
            .where(tasks.c.id.in_(done_ids))
            .values(state="succeeded", attempts=1, result=json.dumps({"name": "before"}), finished_at=time.time())
        )
        await conn.execute(
            tasks.update()
            .where(tasks.c.id.in_(running_ids))
            .values(state="running", attempts=1, lease_owner=dead, lease_expires_at=time.time() + 3600)
        )
    env.restart_queue()
    await env.queue.start()
    done = await ended(env, batch.id)
    output = content(env, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"r{i}" for i in range(40))
    assert len(output) == 40 and done.request_counts.completed == 40
    assert sum(o["response"]["body"]["name"] == "before" for o in output) == 10  # not run again
    assert sorted(env.work.started) == sorted(f"r{i}" for i in range(10, 40))
    retried = [await env.queue.store.get(i, "") for i in running_ids]
    assert {t.attempts for t in retried} == {2}


async def test_a_batch_left_validating_by_a_crash_is_validated_at_the_next_start(env: Env) -> None:
    file_id = await upload(env, [line("a"), line("b")])
    now = time.time()
    async with env.db.engine.begin() as conn:
        await conn.execute(
            batches.insert().values(
                id="batch_leftover",
                endpoint=URL,
                kind="chat",
                input_file_id=file_id,
                completion_window="24h",
                status="validating",
                created_at=now,
                expires_at=now + 3600,
            )
        )
    await env.queue.start()
    done = await ended(env, "batch_leftover")
    assert done.status == "completed" and done.request_counts.completed == 2


async def test_priority_of_a_batch_runs_its_lines_before_older_work(env: Env) -> None:
    env.capacity.slots_by_model["m"] = 1
    await create(env, [line(f"low{i}") for i in range(3)])
    await create(env, [line(f"high{i}") for i in range(2)], priority=10)
    await env.queue.start()
    await until(lambda: len(env.work.started) == 5)
    assert env.work.started == ["high0", "high1", "low0", "low1", "low2"]


async def test_retention_removes_old_files_tasks_and_batches(env: Env) -> None:
    await env.queue.start()
    batch = await ended(env, (await create(env, [line("a")])).id)
    old = time.time() - (env.settings.retention_days + 1) * 86400
    async with env.db.engine.begin() as conn:
        await conn.execute(files.update().values(expires_at=old))
        await conn.execute(tasks.update().values(finished_at=old))
        await conn.execute(batches.update().values(completed_at=old))
    paths = [env.files.path(batch.output_file_id or ""), env.files.path(batch.input_file_id)]
    assert all(p.exists() for p in paths)
    await env.batches.sweep()
    assert not any(p.exists() for p in paths)
    async with env.db.engine.connect() as conn:
        for table in (files, tasks, batches):
            assert (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() == 0


async def test_files_list_pages_and_delete(env: Env) -> None:
    ids = [await upload(env, [line(f"r{i}")]) for i in range(3)]
    page = await env.files.list_files(limit=2)
    assert [f.id for f in page.data] == [ids[2], ids[1]] and page.has_more and page.last_id == ids[1]
    rest = await env.files.list_files(after=page.last_id, limit=2)
    assert [f.id for f in rest.data] == [ids[0]] and not rest.has_more
    await env.files.delete(ids[0])
    assert not env.files.path(ids[0]).exists()
    with pytest.raises(NotFound):
        await env.files.get(ids[0])
    assert (await env.files.list_files(purpose="batch_output")).data == []


async def test_another_owner_cannot_see_or_use_a_file_or_batch(env: Env) -> None:
    made = await env.files.upload(io.BytesIO(line("a").encode()), "in.jsonl", "batch", owner="key-1")
    with pytest.raises(NotFound):
        await env.batches.create(
            BatchCreate(input_file_id=made.id, endpoint=URL, completion_window="1h"), owner="key-2"
        )
    batch = await env.batches.create(
        BatchCreate(input_file_id=made.id, endpoint=URL, completion_window="1h"), owner="key-1"
    )
    with pytest.raises(NotFound):
        await env.batches.get(batch.id, owner="key-2")
    assert (await env.batches.list_batches(owner="key-2")).data == []
    await asyncio.sleep(0)
