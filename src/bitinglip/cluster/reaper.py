"""No engine outlives its server: each server writes down its engine processes, and a starting server stops
any that a dead server left behind.

Engines already follow their server within seconds (a parent-death signal, `vllm/process_group.py`), but that
signal can be lost: a kernel that lacks it, an engine core re-parented by a debugger, a container runtime in
between. The record file is the second line of defence: `<home>/run/engines-<server pid>.json` names the
server and every engine process group with their start times, so a reused pid is never mistaken for ours.
Blocking (psutil, file I/O): called from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from pathlib import Path

import psutil

from bitinglip.core import get_logger

log = get_logger(__name__)
STOP_GRACE_S = 5.0


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: int, started: float) -> bool:
    now = _started(pid)
    return now is not None and abs(now - started) < 0.01


class EngineRecords:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.file = folder / f"engines-{os.getpid()}.json"

    def write(self, groups: dict[str, list[int]]) -> None:
        """Record the engine processes now running, per deployment name (their workers share their group)."""
        engines = [
            {"deployment": name, "pid": pid, "started": started}
            for name, pids in groups.items()
            for pid in pids
            if (started := _started(pid)) is not None
        ]
        me = {"pid": os.getpid(), "started": _started(os.getpid()), "engines": engines}
        self.folder.mkdir(parents=True, exist_ok=True)
        # A name of its own per write: two writes at once (two engines changing together) must not share one.
        partial = self.file.with_suffix(f".{uuid.uuid4().hex[:8]}.partial")
        partial.write_text(json.dumps(me))
        os.replace(partial, self.file)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()

    def reap_orphans(self) -> list[int]:
        """Stop the engines of servers that are gone; the pids stopped."""
        reaped: list[int] = []
        for file in sorted(self.folder.glob("engines-*.json")) if self.folder.is_dir() else []:
            if file == self.file:
                continue
            try:
                record = json.loads(file.read_text())
                server_alive = _alive(int(record["pid"]), float(record["started"]))
            except (OSError, ValueError, KeyError, TypeError):
                server_alive = False
                record = {"engines": []}
            if server_alive:
                continue
            for engine in record.get("engines", []):
                pid, started = int(engine["pid"]), float(engine["started"])
                if _alive(pid, started):
                    log.warning(
                        "engine.orphan_reaped", pid=pid, deployment=engine.get("deployment"), server=record.get("pid")
                    )
                    _stop_group(pid)
                    reaped.append(pid)
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
        return reaped


def _stop_group(pid: int) -> None:
    """SIGTERM the engine's process group (the engine core and its workers), SIGKILL what is left after a grace."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    members = [p for p in psutil.process_iter() if _pgid(p.pid) == group]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=STOP_GRACE_S)
    if alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=STOP_GRACE_S)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
