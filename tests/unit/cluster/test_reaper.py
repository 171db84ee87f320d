"""A starting server stops the engine processes a dead server left behind, and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bitinglip.cluster.reaper import EngineRecords


def _orphan() -> subprocess.Popen[bytes]:
    # A stand-in engine core in a process group of its own, with a child (its "worker") in the same group.
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    return subprocess.Popen([sys.executable, "-c", code], process_group=0)


def test_engines_of_a_dead_server_are_stopped_with_their_workers(tmp_path: Path) -> None:
    engine = _orphan()
    time.sleep(0.5)
    worker = psutil.Process(engine.pid).children()[0]
    dead_server = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_server.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    record = {
        "pid": dead_server.pid,
        "started": time.time() - 100,
        "engines": [{"deployment": "tiny", "pid": engine.pid, "started": psutil.Process(engine.pid).create_time()}],
    }
    (folder / f"engines-{dead_server.pid}.json").write_text(json.dumps(record))
    # a live server's engines are left alone: this test process plays the live server
    me = psutil.Process()
    live = _orphan()
    (folder / "engines-1.json").write_text(
        json.dumps(
            {
                "pid": me.pid,
                "started": me.create_time(),
                "engines": [{"pid": live.pid, "started": psutil.Process(live.pid).create_time()}],
            }
        )
    )
    try:
        reaped = EngineRecords(folder).reap_orphans()
        assert reaped == [engine.pid]
        assert engine.wait(timeout=10) is not None
        worker.wait(timeout=10)
        assert not worker.is_running()
        assert live.poll() is None and (folder / "engines-1.json").exists()
        assert not (folder / f"engines-{dead_server.pid}.json").exists()
    finally:
        for p in (engine, live):
            p.kill()
            p.wait()


def test_a_reused_pid_is_not_mistaken_for_an_engine(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], process_group=0)
    try:
        (tmp_path / "engines-99999999.json").write_text(
            json.dumps({"pid": 99999999, "started": 1.0, "engines": [{"pid": bystander.pid, "started": 1.0}]})
        )
        assert EngineRecords(tmp_path).reap_orphans() == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_the_record_names_our_engines_and_goes_when_we_stop(tmp_path: Path) -> None:
    records = EngineRecords(tmp_path / "run")
    records.write({"tiny": [psutil.Process().pid]})
    data = json.loads(records.file.read_text())
    assert data["pid"] == psutil.Process().pid and data["engines"][0]["deployment"] == "tiny"
    records.remove()
    assert not records.file.exists()
