"""One pull's live state: its progress counters (written by the download thread, read by pollers) and the
status the API and the CLI show."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Literal

import msgspec

from bitinglip.core import BitingLipError

PullState = Literal["resolving", "downloading", "verifying", "ready", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"ready", "failed", "cancelled"})
RATE_WINDOW_S = 5.0


class PullStatus(msgspec.Struct, kw_only=True):
    id: str
    model: str  # the registry name, which is the repo id
    ref: str
    revision: str | None
    commit_sha: str | None
    state: PullState
    bytes_done: int
    bytes_total: int | None
    resumed_bytes: int  # already on disk when the download began, not fetched again
    rate: float  # bytes per second over the last few seconds
    eta_s: float | None
    up_to_date: bool  # the recorded commit was already complete: nothing was downloaded
    path: str | None
    error: str | None
    error_code: str | None
    started_at: datetime
    finished_at: datetime | None


class Pull:
    """One pull's live state. Counters are written by the download thread and read by pollers, under a lock."""

    def __init__(
        self,
        repo_id: str,
        revision: str | None,
        allow: list[str] | None,
        ignore: list[str] | None,
        base: str | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.base = base  # a LoRA adapter's base model, where its config does not name a registered one
        self.repo_id = repo_id
        self.revision = revision
        self.allow = allow
        self.ignore = ignore
        self.state: PullState = "resolving"
        self.commit_sha: str | None = None
        self.path: str | None = None
        self.bytes_total: int | None = None
        self.resumed_bytes = 0
        self.up_to_date = False
        self.exception: BitingLipError | None = None
        self.started_at = datetime.now(UTC)
        self.finished_at: datetime | None = None
        self.cancel = threading.Event()  # seen by the download thread between chunks
        self.done = asyncio.Event()
        self.resolved = asyncio.Event()  # the ref is pinned to a commit (or the pull is over)
        self._lock = threading.Lock()
        self._bytes_done = 0
        self._samples: deque[tuple[float, int]] = deque()

    @property
    def ref(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    def same_request(self, revision: str | None, allow: list[str] | None, ignore: list[str] | None) -> bool:
        return (self.revision, self.allow or None, self.ignore or None) == (revision, allow or None, ignore or None)

    def add(self, n: int) -> None:
        """Progress callback from the download thread: a byte delta (negative when a partial is thrown away)."""
        now = time.monotonic()
        with self._lock:
            self._bytes_done += n
            if not self._samples or now - self._samples[-1][0] >= 0.2:
                self._samples.append((now, self._bytes_done))
            while self._samples and now - self._samples[0][0] > RATE_WINDOW_S:
                self._samples.popleft()

    def finish(self, state: PullState, exception: BitingLipError | None = None) -> None:
        self.state = state
        self.exception = exception
        self.finished_at = datetime.now(UTC)
        self.resolved.set()
        self.done.set()

    def status(self) -> PullStatus:
        now = time.monotonic()
        with self._lock:
            done = self._bytes_done
            window = [s for s in self._samples if now - s[0] <= RATE_WINDOW_S]
        rate = 0.0
        if self.state == "downloading" and window and now - window[0][0] > 0.1:
            rate = max(done - window[0][1], 0) / (now - window[0][0])
        left = (self.bytes_total or 0) - done
        error = self.exception
        return PullStatus(
            id=self.id,
            model=self.repo_id,
            ref=self.ref,
            revision=self.revision,
            commit_sha=self.commit_sha,
            state=self.state,
            bytes_done=done,
            bytes_total=self.bytes_total,
            resumed_bytes=self.resumed_bytes,
            rate=round(rate, 1),
            eta_s=round(left / rate, 1) if rate > 0 and self.bytes_total is not None else None,
            up_to_date=self.up_to_date,
            path=self.path,
            error=error.message if error else None,
            error_code=error.code if error else None,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the pull has finished, at most ``timeout`` seconds; True if it has."""
        with contextlib.suppress(TimeoutError):  # asyncio.timeout keeps a cancel wait_for may drop (cpython#86296)
            async with asyncio.timeout(timeout):
                await self.done.wait()
        return self.done.is_set()

    async def wait_resolved(self, timeout: float) -> None:
        """Wait until the hub has answered for the ref: an unknown repo or a missing token is known by then."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.resolved.wait()
