"""No engine outlives its server: each server writes down its engine processes, and a starting server stops
any that a dead server left behind. Nor do their shared-memory rings.

Engines already follow their server within seconds (a parent-death signal, `vllm/process_group.py`), but that
signal can be lost: a kernel that lacks it, an engine core re-parented by a debugger, a container runtime in
between. The record file is the second line of defence: `<home>/run/engines-<server pid>.json` names the
server and every engine process group with their start times, so a reused pid is never mistaken for ours.

vLLM's engine core and its workers hand steps to each other through rings in /dev/shm (memory, ~160 MB each
here), which vLLM unlinks only in the finalizers of the processes that made them: an engine killed (a crash, the
OOM killer, kill -9, the server's own SIGKILL after a stop's grace) leaves them behind until the machine
restarts. So each record names the rings its engine maps (`rings_of`), and whoever sees the engine go (its own
`stop`, the reaper) unlinks them (`unlink_rings`). A ring still mapped keeps its memory until it is unmapped;
only its name goes.

vLLM's processes also talk over ZeroMQ sockets, files in a folder (`VLLM_RPC_BASE_PATH`, the temp folder by
default) that a process removes only if it closes them, which one that is killed or leaves without Python's
teardown does not: seven per engine start were left in /tmp. Each server's engines get folders of their own
under one of the server's (`ipc_root`): an engine's goes when it stops, the server's when it stops with none
left in it, and a dead server's (named in its record) when the reaper sees it gone. So does the socket of the
engines' fork server (`vllm/fork_server.py`), in multiprocessing's folder of the server (`pymp-*`).
Blocking (psutil, file I/O): called from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import psutil

from bitinglip.core import get_logger

log = get_logger(__name__)
STOP_GRACE_S = 5.0
SHM = Path("/dev/shm")
RING_PREFIX = "psm_"  # Python's `SharedMemory` names, which vLLM's rings between its processes are


IPC_PREFIX = "bitinglip-ipc-"
MP_PREFIX = "pymp-"  # multiprocessing's own folders (`multiprocessing.util.get_temp_dir`)


def ipc_root(pid: int | None = None) -> Path:
    """The folder of a server's (this one's by default) engine sockets: short, for a socket's path has at most
    107 bytes, and in the temp folder, where vLLM puts them itself."""
    return Path(tempfile.gettempdir()) / f"{IPC_PREFIX}{os.getpid() if pid is None else pid}"


def new_ipc_dir() -> Path:
    """A folder of its own for one engine's sockets, in this server's."""
    root = ipc_root()
    root.mkdir(mode=0o700, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="engine-", dir=root))


def remove_ipc_dir(folder: Path | str | None) -> None:
    """Remove an engine's or a server's socket folder; never anything but one of those."""
    if folder is None:
        return
    folder = Path(folder)
    root = folder if folder.name.startswith(IPC_PREFIX) else folder.parent
    if root.parent == Path(tempfile.gettempdir()) and root.name.startswith(IPC_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def remove_mp_dir(folder: Path | str) -> None:
    """Remove a server's multiprocessing folder (`pymp-*` in the temp folder, where the engines' fork server has
    its socket); never anything but such a folder."""
    folder = Path(folder)
    if folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(MP_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def rings_of(pid: int) -> list[str]:
    """The shared-memory rings (names in /dev/shm) the process maps; none where /proc cannot say."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    names: set[str] = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        path = Path(fields[5]) if len(fields) == 6 and not fields[5].endswith("(deleted)") else None
        if path is not None and path.parent == SHM and path.name.startswith(RING_PREFIX):
            names.add(path.name)
    return sorted(names)


def unlink_rings(names: list[str]) -> int:
    """Unlink the rings of an engine that is gone; how many were still there."""
    unlinked = 0
    for name in names:
        if name.startswith(RING_PREFIX) and "/" not in name:
            with contextlib.suppress(FileNotFoundError):
                (SHM / name).unlink()
                unlinked += 1
    return unlinked


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
        """Record the engine processes now running, per deployment name (their workers share their group), and the
        folders of this server's sockets."""
        from bitinglip.cluster.vllm import fork_server  # here: the vllm package imports this module

        engines = [
            {"deployment": name, "pid": pid, "started": started, "rings": rings_of(pid)}
            for name, pids in groups.items()
            for pid in pids
            if (started := _started(pid)) is not None
        ]
        me = {
            "pid": os.getpid(),
            "started": _started(os.getpid()),
            "engines": engines,
            "ipc": str(ipc_root()),
            "fork_server": str(folder) if (folder := fork_server.socket_folder()) else None,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        # A name of its own per write: two writes at once (two engines changing together) must not share one.
        partial = self.file.with_suffix(f".{uuid.uuid4().hex[:8]}.partial")
        partial.write_text(json.dumps(me))
        os.replace(partial, self.file)

    def remove(self) -> None:
        """This server's record, and its socket folder if no engine's is left in it: called once its engines are
        stopped. An engine still starting (a stop during its start) keeps its folder: its handshake is there."""
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()
        with contextlib.suppress(OSError):
            ipc_root().rmdir()

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
                if unlinked := unlink_rings([str(name) for name in engine.get("rings", [])]):
                    log.info("engine.rings_unlinked", pid=pid, count=unlinked, server=record.get("pid"))
            if isinstance(record.get("ipc"), str):
                remove_ipc_dir(record["ipc"])
            if isinstance(record.get("fork_server"), str):
                remove_mp_dir(record["fork_server"])
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
