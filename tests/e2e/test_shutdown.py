"""Stopping: the shared server stops cleanly and quietly on Ctrl-C (marked to run after every other test); a
killed server takes its engine with it. (An engine that dies is restarted: tests/e2e/test_cluster.py.)"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import psutil
import pytest

from bitinglip.cluster.reaper import EngineRecords, ipc_root
from e2e.conftest import Server, start_server, stop_server


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def _fork_server_socket(server: Server) -> Path:
    """Where the server's fork server (cluster/vllm/fork_server.py) listens: a socket in multiprocessing's folder."""
    (fork_server,) = [
        p for p in psutil.Process(server.proc.pid).children() if "multiprocessing.forkserver" in " ".join(p.cmdline())
    ]
    (path,) = [Path(c.laddr) for c in fork_server.net_connections(kind="unix") if c.laddr]
    assert path.parent.name.startswith("pymp-"), path
    return path


@pytest.mark.stops_shared_server
def test_ctrl_c_stops_the_server_and_its_engine_quietly(server: Server) -> None:
    """SIGINT to the whole process group, as Ctrl-C sends it: the engine processes (in a process group of their own)
    do not hear it; the server stops them in order, and nothing is logged at error level."""
    children = [p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)]
    assert children, "the engine core should run in a child process"
    fork_server_socket = _fork_server_socket(server)
    began = time.monotonic()
    assert stop_server(server, signal.SIGINT, group=True) == 0
    assert time.monotonic() - began < 60
    deadline = time.monotonic() + 10
    while not _gone(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(children), f"left running: {[p for p in children if psutil.pid_exists(p)]}"
    log = server.log()
    assert '"event": "server.exit"' in log and '"event": "engine.stopped"' in log
    # A clean stop is quiet: nothing at error level, no traceback, no leaked shared memory.
    errors = [line for line in log.splitlines() if '"level": "error"' in line or "Traceback" in line]
    assert errors == [], errors
    assert "leaked shared_memory" not in log
    assert not ipc_root(server.proc.pid).exists()  # the engines' sockets went with them
    assert not fork_server_socket.parent.exists()  # and the fork server's, whose folder Python's exit would remove
    # The engine processes left when told to (quick_exit.py), not at the end of vLLM's 5 s grace.
    assert "force killing" not in log


def test_an_engine_never_outlives_a_killed_server(tmp_path, tiny_model_dir) -> None:
    """SIGKILL leaves the server no chance to stop its engine: the kernel tells the engine (parent-death signal)."""
    srv = start_server(tmp_path, tiny_model_dir)
    children: list[int] = []
    try:
        children = [p.pid for p in psutil.Process(srv.proc.pid).children(recursive=True)]
        assert children
        srv.proc.kill()
        srv.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not _gone(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(children), f"left running: {[p for p in children if psutil.pid_exists(p)]}"
        # The killed engine core's shared-memory ring outlives it (its worker, told by the closed pipe, unlinked
        # its own), named in the server's record; the next server's reaper (run here as at start) unlinks it.
        record = json.loads((tmp_path / "run" / f"engines-{srv.proc.pid}.json").read_text())
        rings = [name for engine in record["engines"] for name in engine["rings"]]
        assert any(Path("/dev/shm", name).exists() for name in rings), rings
        assert ipc_root(srv.proc.pid).exists()  # the killed engine's sockets, also named in the record
        assert Path(record["fork_server"]).is_dir()  # and the fork server's
        EngineRecords(tmp_path / "run").reap_orphans()
        assert not [name for name in rings if Path("/dev/shm", name).exists()], rings
        assert not ipc_root(srv.proc.pid).exists()
        assert not Path(record["fork_server"]).exists()
    finally:
        stop_server(srv)
        for pid in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
