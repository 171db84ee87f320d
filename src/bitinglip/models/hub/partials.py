"""The download's work folder: ``dest/.partial/<path>.part`` files, their JSON sidecars and their locks.

A partial file holds the first bytes of one blob; its sidecar says which (repo, commit, path, size, hashes and
the ETag of the server that sent the bytes), so a later call, in any process, knows whether it can continue
it with a ``Range`` request. An exclusive ``flock`` on the partial marks the process writing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bitinglip.core import InvalidInput
from bitinglip.models.hub.errors import DownloadInProgress
from bitinglip.models.hub.integrity import file_matches
from bitinglip.models.hub.types import HubFile, RepoSnapshot

if sys.platform != "win32":  # fcntl is POSIX-only; without it two concurrent pulls of one file are not detected
    import fcntl

PARTIAL_DIR = ".partial"


@dataclass
class Plan:
    """What one file needs, decided before the first byte is fetched."""

    file: HubFile
    final: Path
    part: Path
    sidecar: Path
    done: bool  # the final file is there and verified
    have: int  # bytes of a matching partial, counted as done at the start


def make_plan(snapshot: RepoSnapshot, f: HubFile, root: Path) -> Plan:
    if f.path == PARTIAL_DIR or f.path.startswith(PARTIAL_DIR + "/"):
        raise InvalidInput(f"repo file {f.path!r} collides with the download work folder", param="path")
    final = inside(root, f.path)
    part = inside(root, f"{PARTIAL_DIR}/{f.path}.part")
    sidecar = part.with_name(part.name + ".json")
    plan = Plan(file=f, final=final, part=part, sidecar=sidecar, done=False, have=0)
    if file_matches(final, f):
        plan.done = True
        discard_stale(plan)
        return plan
    if part.is_file() and sidecar_matches(sidecar, snapshot, f):
        size = part.stat().st_size
        plan.have = size if size <= f.size else 0
    return plan


def inside(root: Path, rel: str) -> Path:
    """``root/rel`` with every symlink resolved, refused unless it stays below ``root``."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or target == root:
        raise InvalidInput(f"file path {rel!r} would be written outside {root}", param="path")
    return target


def lock(handle: IO[bytes], path: str) -> None:
    if sys.platform == "win32":  # pragma: no cover
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DownloadInProgress(f"{path} is being downloaded by another process") from None


def read_sidecar(sidecar: Path) -> dict[str, object]:
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_sidecar(sidecar: Path, snapshot: RepoSnapshot, f: HubFile, response_etag: str | None) -> None:
    record = {
        "repo_id": snapshot.repo_id,
        "commit_sha": snapshot.commit_sha,
        "path": f.path,
        "size": f.size,
        "sha256": f.sha256,
        "etag": f.etag,
        "response_etag": response_etag,
    }
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, sidecar)


def sidecar_matches(sidecar: Path, snapshot: RepoSnapshot, f: HubFile) -> bool:
    """Whether the partial next to ``sidecar`` holds the start of the very blob ``f`` names."""
    data = read_sidecar(sidecar)
    if data.get("repo_id") != snapshot.repo_id or data.get("path") != f.path or data.get("size") != f.size:
        return False
    if f.sha256 is not None and data.get("sha256") == f.sha256:
        return True  # same LFS blob: resumable even if the branch moved to another commit
    return data.get("commit_sha") == snapshot.commit_sha and data.get("etag") == f.etag


def restart(out: IO[bytes], plan: Plan, snapshot: RepoSnapshot) -> int:
    """Empty the partial and its sidecar's server ETag; returns the new offset, 0."""
    out.seek(0)
    out.truncate(0)
    write_sidecar(plan.sidecar, snapshot, plan.file, response_etag=None)
    return 0


def discard(plan: Plan) -> None:
    for p in (plan.part, plan.sidecar):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def discard_stale(plan: Plan) -> None:
    """Drop a partial left next to a finished file, unless another process is still writing it."""
    try:
        fd = os.open(plan.part, os.O_RDWR)
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            plan.sidecar.unlink()
        return
    with os.fdopen(fd, "r+b") as handle:
        try:
            lock(handle, plan.file.path)
        except DownloadInProgress:
            return
        discard(plan)


def remove_empty_dirs(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, _dirnames, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # fails, as wanted, on anything not empty
