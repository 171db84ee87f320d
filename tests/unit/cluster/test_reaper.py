"""A starting server stops the engine processes a dead server left behind, and nothing else."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from bitinglip.cluster.reaper import (
    RING_PREFIX,
    EngineRecords,
    ipc_root,
    new_ipc_dir,
    remove_ipc_dir,
    rings_of,
    unlink_rings,
)


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
    assert data["ipc"] == str(ipc_root())
    engine_sockets = new_ipc_dir()
    assert engine_sockets.parent == ipc_root() and len(str(engine_sockets / str(uuid.uuid4()))) < 107
    try:
        records.remove()
        assert not records.file.exists()
        # An engine still starting keeps its folder (its handshake socket is in it) and so the server's.
        assert engine_sockets.is_dir()
        remove_ipc_dir(engine_sockets)  # what its stop does
        records.remove()
        assert not ipc_root().exists()
    finally:
        remove_ipc_dir(ipc_root())


def _socket_in(folder: Path) -> Path:
    """A ZeroMQ socket file, as vLLM binds one, left behind as by a process that never closed it."""
    path = folder / str(uuid.uuid4())
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    return path


def test_an_engines_socket_folder_goes_with_it_and_nothing_else_is_removed(tmp_path: Path) -> None:
    folder = new_ipc_dir()
    other = new_ipc_dir()
    left = _socket_in(folder)
    try:
        remove_ipc_dir(folder)
        assert not left.exists() and not folder.exists()
        assert other.exists()  # another engine's, of the same server
        outside = tmp_path / "engine-x"
        outside.mkdir()
        remove_ipc_dir(outside)  # not under a server's socket folder: never touched
        remove_ipc_dir(tmp_path)
        assert outside.exists()
    finally:
        remove_ipc_dir(ipc_root())


def test_a_dead_servers_socket_folder_is_removed_by_the_reaper(tmp_path: Path) -> None:
    dead_server = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_server.wait()
    root = ipc_root(dead_server.pid)
    (root / "engine-1").mkdir(parents=True)
    left = _socket_in(root / "engine-1")
    folder = tmp_path / "run"
    folder.mkdir()
    record = {"pid": dead_server.pid, "started": time.time() - 100, "engines": [], "ipc": str(root)}
    (folder / f"engines-{dead_server.pid}.json").write_text(json.dumps(record))
    try:
        assert EngineRecords(folder).reap_orphans() == []
        assert not left.exists() and not root.exists()
    finally:
        remove_ipc_dir(root)


def test_a_dead_servers_fork_server_folder_is_removed_by_the_reaper_and_nothing_else(tmp_path: Path) -> None:
    dead_server = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_server.wait()
    fork_server = Path(tempfile.mkdtemp(prefix="pymp-"))  # multiprocessing's folder of a server, as it names it
    left = _socket_in(fork_server)
    not_ours = tmp_path / "pymp-elsewhere"  # a folder of that name outside the temp folder: never touched
    not_ours.mkdir()
    folder = tmp_path / "run"
    folder.mkdir()
    for name, path in (("a", fork_server), ("b", not_ours)):
        record = {"pid": dead_server.pid, "started": time.time() - 100, "engines": [], "fork_server": str(path)}
        (folder / f"engines-{dead_server.pid}{name}.json").write_text(json.dumps(record))
    try:
        assert EngineRecords(folder).reap_orphans() == []
        assert not left.exists() and not fork_server.exists()
        assert not_ours.is_dir()
    finally:
        shutil.rmtree(fork_server, ignore_errors=True)


def test_the_rings_of_a_killed_engine_are_unlinked_by_whoever_sees_it_go(tmp_path: Path) -> None:
    # A stand-in engine core that makes a ring as vLLM's do (Python's SharedMemory) and is then killed: its
    # finalizer never runs, and the ring would stay in /dev/shm until the machine restarts.
    code = (
        "import sys, time; from multiprocessing import shared_memory, resource_tracker; "
        "ring = shared_memory.SharedMemory(create=True, size=1 << 16); "
        "resource_tracker.unregister(ring._name, 'shared_memory'); "  # as a killed engine's: nobody cleans it up
        "print(ring.name, flush=True); time.sleep(60)"
    )
    engine = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, process_group=0)
    assert engine.stdout is not None
    name = engine.stdout.readline().strip().lstrip("/")
    dead_server = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_server.wait()
    try:
        assert name.startswith(RING_PREFIX) and rings_of(engine.pid) == [name]
        records = EngineRecords(tmp_path / "run")
        records.write({"tiny": [engine.pid]})  # what the server wrote while its engine ran
        record = json.loads(records.file.read_text())
        assert record["engines"][0]["rings"] == [name]
        engine.kill()
        engine.wait()
        assert Path("/dev/shm", name).exists()
        # The next server's reaper finds the server gone and the engine with it, and unlinks what it left.
        record["pid"] = dead_server.pid
        record["fork_server"] = None  # this test process's own, in use: not the dead server's to take with it
        records.file.rename(records.folder / f"engines-{dead_server.pid}.json")
        (records.folder / f"engines-{dead_server.pid}.json").write_text(json.dumps(record))
        assert EngineRecords(records.folder).reap_orphans() == []  # nothing left running to stop
        assert not Path("/dev/shm", name).exists()
        assert unlink_rings([name]) == 0  # and once gone, gone
    finally:
        engine.kill()
        engine.wait()
        Path("/dev/shm", name).unlink(missing_ok=True)
