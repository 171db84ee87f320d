"""Hub pulls in the background: one asyncio task per pull, the blocking hub work in worker threads.

A pull goes resolving -> downloading -> verifying -> ready, or ends failed or cancelled. Its files go to
``models.dir/hub/<org>/<name>/<commit_sha>/``, so an update downloads beside the copy being served, and the
registry row switches to the new folder only once the new commit is verified. The row carries the pull's
ref while it runs (``pull_ref``), so a pull cut short by a dead process is resumed at the next start-up;
the hub client continues partial files where they stopped.

There is at most one pull per repository at a time: a second start of the same ref joins the first (same
id), a start of another ref of a repository being pulled is refused. Different repositories run in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Set
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bitinglip.core import BitingLipError, Conflict, InvalidInput, NotFound, Unavailable, get_logger
from bitinglip.models.adapters import is_adapter_dir
from bitinglip.models.checks import bytes_on_disk, check_files, check_model_dir, files_present
from bitinglip.models.hub import (
    PARTIAL_DIR,
    DownloadCancelled,
    DownloadInProgress,
    HubClient,
    HubFile,
    file_matches,  # the size and hash check the downloader itself uses
    parse_ref,
)
from bitinglip.models.layout import select_files
from bitinglip.models.pull_state import Pull, PullState
from bitinglip.models.registry import ModelRecord, ModelRegistry, inspect_dir

log = get_logger(__name__)

KEEP_FINISHED_S = 3600.0  # finished pulls stay pollable this long; the registry row is the durable record
STOP_GRACE_S = 15.0
_SHA_LEN = 40


def link_unchanged(old: Path, dest: Path, files: list[HubFile]) -> None:
    """Hard-link the previous commit's files that the new commit did not change into the new commit's folder.

    A file counts as unchanged when its size and hash match what the hub lists for the new commit. Linking
    is safe because downloads swap files in with a rename and never write through an existing one.
    """
    for f in files:
        source, target = old / f.path, dest / f.path
        if target.exists() or not file_matches(source, f):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another filesystem, or no hard links there: download it instead
            os.link(source, target)


def pid_alive(pid: int | None, host: str | None = None) -> bool:
    """Whether another live process has this pid (our own pid is left over from an earlier life of ours). A pid
    on another machine (several instances share the registry) cannot be looked at from here: taken for alive."""
    if pid is not None and host is not None and host != socket.gethostname():
        return True
    return pid is not None and pid != os.getpid() and psutil.pid_exists(pid)


class PullManager:
    def __init__(
        self,
        registry: ModelRegistry,
        hub: HubClient,
        supported_architectures: Callable[[], Set[str]],
        is_in_use: Callable[[ModelRecord], bool],
        adapter_fields: Callable[[Path, str | None], Awaitable[dict[str, Any]]],
    ) -> None:
        self.registry = registry
        self.hub = hub
        self.supported_architectures = supported_architectures
        self.is_in_use = is_in_use
        # An adapter's row fields once it is checked against its base (ModelService.adapter_fields).
        self.adapter_fields = adapter_fields
        self._pulls: dict[str, Pull] = {}  # id -> pull, finished ones for a while
        self._active: dict[str, Pull] = {}  # repo id -> the pull running for it
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------------------------ public

    def start(
        self, ref: str, allow: list[str] | None = None, ignore: list[str] | None = None, base: str | None = None
    ) -> Pull:
        """Start pulling ``org/name[@revision]`` in the background and return at once (needs a running loop).
        ``base``: for a LoRA adapter, its base model when its config does not name a registered one.

        The ref is checked before anything touches the network or the disk.
        """
        repo_id, revision = parse_ref(ref)
        for pattern in [*(allow or []), *(ignore or [])]:
            if not isinstance(pattern, str) or not pattern or len(pattern) > 200:
                raise InvalidInput(f"bad file pattern {str(pattern)[:200]!r}", param="allow_patterns")
        running = self._active.get(repo_id)
        if running is not None:
            if running.same_request(revision, allow, ignore):
                return running
            raise Conflict(f"{running.ref} is being pulled; wait for it to finish first", param="model")
        self._forget_old()
        pull = Pull(repo_id, revision, allow, ignore, base)
        self._pulls[pull.id] = pull
        self._active[repo_id] = pull
        task = asyncio.create_task(self._run(pull), name=f"pull-{repo_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("pull.started", id=pull.id, ref=pull.ref)
        return pull

    def get(self, pull_id: str) -> Pull:
        pull = self._pulls.get(pull_id)
        if pull is None:
            raise NotFound(f"no pull with id {pull_id!r} (finished pulls are kept for an hour)", param="id")
        return pull

    def recent(self) -> list[Pull]:
        return sorted(self._pulls.values(), key=lambda p: p.started_at, reverse=True)

    def active(self, repo_id: str) -> Pull | None:
        return self._active.get(repo_id)

    async def cancel(self, pull: Pull) -> None:
        """Stop a pull and wait for it; its partial files stay, so pulling again resumes them."""
        pull.cancel.set()
        await pull.wait()

    async def resume_unfinished(self) -> list[Pull]:
        """At start-up: restart the pulls a dead process left behind (rows with a pull_ref)."""
        resumed = []
        for row in await self.registry.unfinished_pulls():
            if pid_alive(row.pull_pid, row.host):
                log.info("pull.left_to_its_process", model=row.name, pid=row.pull_pid, host=row.host)
                continue
            patterns = json.loads(row.pull_patterns) if row.pull_patterns else {}
            try:
                pull = self.start(
                    row.pull_ref or row.name, patterns.get("allow"), patterns.get("ignore"), patterns.get("base")
                )
            except BitingLipError as e:
                log.warning("pull.not_resumed", model=row.name, error=e.message)
                continue
            log.info("pull.resuming", id=pull.id, ref=pull.ref, was=row.state)
            resumed.append(pull)
        return resumed

    async def stop(self) -> None:
        """Cancel every running pull and wait for the threads to notice; the rows keep their pull_ref."""
        for pull in self._active.values():
            pull.cancel.set()
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:  # stuck in a network call: stop waiting for it
            task.cancel()

    # -------------------------------------------------------------------------------------------- work

    async def _run(self, pull: Pull) -> None:
        state: PullState = "ready"
        error: BitingLipError | None = None
        try:
            await self._pull(pull)
        except (DownloadCancelled, asyncio.CancelledError):
            # The row is left as it was (pulling, with its pull_ref): the next start-up or pull resumes it.
            state, error = "cancelled", DownloadCancelled(f"pull of {pull.ref} cancelled; pull again to resume")
            log.info("pull.cancelled", id=pull.id, ref=pull.ref, bytes_done=pull.status().bytes_done)
        except BitingLipError as e:
            state, error = "failed", e
        except Exception as e:  # a bug or an OS error: still never leave the row "pulling" with nobody on it
            log.exception("pull.crashed", id=pull.id, ref=pull.ref)
            state, error = "failed", BitingLipError(f"{type(e).__name__}: {e}")
        try:
            if state == "failed" and error is not None:
                await self._record_failure(pull, error)
        finally:
            # Only now may another start() of this repo begin a new pull: the row is in its final state.
            if self._active.get(pull.repo_id) is pull:
                del self._active[pull.repo_id]
            pull.finish(state, error)

    async def _pull(self, pull: Pull) -> None:
        snapshot = await asyncio.to_thread(self.hub.resolve, pull.repo_id, pull.revision)
        sha = snapshot.commit_sha
        pull.commit_sha = sha
        pull.resolved.set()
        files = select_files(snapshot.files, pull.allow, pull.ignore)
        if not files:
            raise InvalidInput(f"{pull.ref} has no files to download (check the allow and ignore patterns)")
        pull.bytes_total = sum(f.size for f in files)
        dest = self.registry.hub_path(pull.repo_id, sha)
        pull.path = str(dest)

        existing = await self.registry.get(pull.repo_id)
        if existing is not None and existing.source != "hub":
            raise Conflict(
                f"a {existing.source} model named {pull.repo_id!r} is already registered; remove it first",
                param="model",
            )
        if (
            existing is not None
            and existing.state == "ready"
            and existing.commit_sha == sha
            and Path(existing.path) == dest
            and await asyncio.to_thread(files_present, dest, files)
        ):
            # Same commit, complete on disk: record the ref asked for (a tag may name the same commit) and stop.
            await self.registry.update(
                pull.repo_id, revision=snapshot.revision, pull_ref=None, pull_patterns=None, pull_pid=None, error=None
            )
            pull.up_to_date = True
            pull.add(pull.bytes_total)
            log.info("pull.up_to_date", id=pull.id, ref=pull.ref, commit=sha)
            return

        in_progress = {
            "pull_ref": pull.ref,
            "pull_patterns": json.dumps({"allow": pull.allow, "ignore": pull.ignore, "base": pull.base}),
            "pull_pid": os.getpid(),
        }
        if existing is not None and existing.state == "ready":
            await self.registry.update(pull.repo_id, **in_progress)  # keeps serving the old commit meanwhile
        else:
            await self.registry.save(
                ModelRecord(
                    name=pull.repo_id,
                    source="hub",
                    path=str(dest),
                    state="pulling",
                    repo_id=pull.repo_id,
                    revision=snapshot.revision,
                    commit_sha=sha,
                    size_bytes=0,
                    created_at=existing.created_at if existing else None,
                    **in_progress,  # type: ignore[arg-type]
                )
            )

        if existing is not None and existing.state == "ready" and existing.path != str(dest):
            await asyncio.to_thread(link_unchanged, Path(existing.path), dest, files)
        pull.state = "downloading"
        pull.resumed_bytes = await asyncio.to_thread(bytes_on_disk, dest, files, PARTIAL_DIR)
        log.info(
            "pull.downloading",
            id=pull.id,
            ref=pull.ref,
            commit=sha,
            files=len(files),
            bytes_total=pull.bytes_total,
            resumed_bytes=pull.resumed_bytes,
            dest=str(dest),
        )
        began = time.monotonic()
        await asyncio.to_thread(self.hub.download, snapshot, files, dest, progress=pull.add, cancel=pull.cancel)
        seconds = time.monotonic() - began

        pull.state = "verifying"
        adapter: dict[str, Any] = {}
        if is_adapter_dir(dest):  # a LoRA adapter: checked against its base, which must be registered
            await asyncio.to_thread(check_files, dest, files)
            adapter = await self.adapter_fields(dest, pull.base)
            facts = await asyncio.to_thread(inspect_dir, dest)
        else:
            supported = await asyncio.to_thread(self.supported_architectures)
            facts = await asyncio.to_thread(check_model_dir, dest, files, supported)

        current = await self.registry.get(pull.repo_id)
        if current is None:  # removed while we downloaded
            raise Conflict(f"{pull.repo_id} was removed during its pull")
        await self.registry.save(
            ModelRecord(
                name=pull.repo_id,
                source="hub",
                path=str(dest),
                state="ready",
                repo_id=pull.repo_id,
                revision=snapshot.revision,
                commit_sha=sha,
                size_bytes=facts.size_bytes,
                architecture=adapter.pop("architecture", facts.architecture),
                context_length=adapter.pop("context_length", facts.context_length),
                dtype=facts.dtype,
                parameters=facts.parameters,
                created_at=current.created_at,
                last_used_at=current.last_used_at,
                used_by_pid=current.used_by_pid,
                **adapter,
            )
        )
        fetched = pull.bytes_total - pull.resumed_bytes
        log.info(
            "pull.ready",
            id=pull.id,
            ref=pull.ref,
            commit=sha,
            bytes=pull.bytes_total,
            fetched=fetched,
            seconds=round(seconds, 2),
            mb_per_s=round(fetched / seconds / 1e6, 1) if seconds > 0 else None,
        )
        await self._drop_old_commits(current, keep=dest)

    async def _drop_old_commits(self, old: ModelRecord, keep: Path) -> None:
        """Remove other commits' folders (the replaced one, abandoned partial pulls) unless the old one is served."""
        if old.state == "ready" and old.path != str(keep) and self.is_in_use(old):
            log.info("pull.old_commit_kept", model=old.name, path=old.path, why="being served")
            return
        for folder in self.registry.hub_repo_dir(old.name).iterdir():
            if folder != keep and folder.is_dir() and len(folder.name) == _SHA_LEN:
                await asyncio.to_thread(shutil.rmtree, folder, True)
                log.info("pull.old_commit_removed", model=old.name, path=str(folder))

    async def _record_failure(self, pull: Pull, error: BitingLipError) -> None:
        log.warning("pull.failed", id=pull.id, ref=pull.ref, error=error.message, code=error.code)
        if isinstance(error, DownloadInProgress):
            return  # another process is pulling the same files: its row, its outcome
        row = await self.registry.get(pull.repo_id)
        if row is None or row.source != "hub":
            return
        # A hub that is down is worth another try at the next start-up; anything else needs the user.
        retry = {} if isinstance(error, Unavailable) else {"pull_ref": None, "pull_patterns": None}
        if row.state == "ready":  # an update failed: the old commit keeps serving, and says why it was not replaced
            await self.registry.update(
                pull.repo_id, error=f"update to {pull.ref} failed: {error.message}", pull_pid=None, **retry
            )
        else:
            await self.registry.update(pull.repo_id, state="failed", error=error.message, pull_pid=None, **retry)

    def _forget_old(self) -> None:
        now = datetime.now(UTC)
        for pull_id, pull in list(self._pulls.items()):
            if pull.finished_at is not None and (now - pull.finished_at).total_seconds() > KEEP_FINISHED_S:
                del self._pulls[pull_id]
