"""Usage counters: one per (day, key, model) in memory, added to their rows in batches, never lost on a clean
stop, kept (bounded) when a write fails."""

from __future__ import annotations

import pytest

from bitinglip.core import Database, DbSettings
from bitinglip.gateway import UsageRecorder
from bitinglip.gateway import usage as usage_module


def database(url: str) -> Database:
    return Database(DbSettings(url=url))


async def test_counters_are_added_to_their_rows_and_a_stop_writes_the_rest(db_url: str) -> None:
    db = database(db_url)
    await db.start()
    recorder = UsageRecorder(db, flush_s=3600)
    await recorder.start()
    for _ in range(1000):
        recorder.record("k1", "tiny", 10, 5, error=False)
    recorder.record("k1", "tiny", 10, 0, error=True)
    assert len(recorder.pending) == 1  # a thousand requests, one counter
    await recorder.flush()
    recorder.record("k1", "tiny", 1, 1, error=False)
    recorder.record("k2", "tiny", 2, 2, error=False)
    await recorder.stop()  # the last counts are written on the way out
    report = await UsageRecorder(db).report()
    rows = {r.key_id: r for r in report.data}
    assert (rows["k1"].requests, rows["k1"].prompt_tokens, rows["k1"].completion_tokens, rows["k1"].errors) == (
        1002,
        10011,
        5001,
        1,
    )
    assert report.total.requests == 1003
    assert [r.key_id for r in (await UsageRecorder(db).report(key_id="k2")).data] == ["k2"]
    await db.stop()


async def test_a_failed_write_keeps_the_counts_for_the_next_one(db_url: str) -> None:
    db = database(db_url)
    recorder = UsageRecorder(db)
    recorder.record("k", "tiny", 3, 4, error=False)
    await recorder.flush()  # the database is not started: the write fails
    assert recorder.failed_writes == 1
    recorder.record("k", "tiny", 3, 4, error=False)
    assert recorder.pending[next(iter(recorder.pending))] == [2, 6, 8, 0]  # merged, not a second entry
    await db.start()
    await recorder.flush()
    assert not recorder.pending
    assert (await recorder.report()).total.completion_tokens == 8
    await db.stop()


async def test_counters_waiting_on_a_broken_database_stay_bounded(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_module, "MAX_CELLS", 10)
    recorder = UsageRecorder(database(db_url))
    for i in range(25):
        recorder.record("k", f"model-{i}", 1, 1, error=False)
        await recorder.flush()  # fails every time
    assert len(recorder.pending) == 10
    assert recorder.dropped == 15
    assert "model-24" in {model for _, _, model in recorder.pending}
