"""The resumable file transfer: plans, ``Range`` requests, retries with backoff, the disk-space check.

Ours rather than the library's, because its downloads do not resume across processes: each attempt writes to a
process-unique temporary file, so a pull killed half-way starts again from byte 0. Here every file is streamed
into a stable partial (see ``partials``) that a later call, in any process, continues.

Transient failures in the middle of a transfer (a dropped connection, HTTP 5xx or 429) are retried with
exponential backoff, up to ``max_retries`` in a row without progress.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

import httpx
from huggingface_hub import hf_hub_url
from huggingface_hub.utils import build_hf_headers

from bitinglip.core import get_logger
from bitinglip.models.hub.errors import (
    DownloadCancelled,
    HubError,
    HubUnavailable,
    IntegrityError,
    NotEnoughDisk,
    file_status_error,
)
from bitinglip.models.hub.integrity import handle_matches
from bitinglip.models.hub.partials import (
    PARTIAL_DIR,
    Plan,
    discard,
    lock,
    make_plan,
    read_sidecar,
    remove_empty_dirs,
    restart,
    sidecar_matches,
    write_sidecar,
)
from bitinglip.models.hub.types import HubFile, RepoSnapshot

log = get_logger(__name__)

MAX_BACKOFF_S = 30.0

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def file_url(endpoint: str, snapshot: RepoSnapshot, f: HubFile) -> str:
    return hf_hub_url(snapshot.repo_id, f.path, revision=snapshot.commit_sha, endpoint=endpoint)


def check_disk_space(dest: Path, needed_bytes: int) -> None:
    """Raise ``NotEnoughDisk`` when the filesystem that will hold ``dest`` has less than ``needed_bytes`` free."""
    probe = Path(dest).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed_bytes > free:
        raise NotEnoughDisk(
            f"not enough disk space in {dest}: {_human(needed_bytes)} needed, {_human(free)} free",
            param="dest",
        )


@dataclass(frozen=True)
class Downloader:
    """One download's settings; ``run`` does the work. Blocking: callers use a worker thread."""

    endpoint: str
    token: str | None
    timeout: float
    max_retries: int
    backoff_s: float

    def run(
        self,
        snapshot: RepoSnapshot,
        files: list[HubFile],
        dest: Path,
        *,
        progress: Callable[[int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Fetch ``files`` of ``snapshot`` into ``dest/<path>``, resuming partial files left by any earlier call.

        ``progress(n)`` gets byte deltas: first, once, the bytes already on disk (finished files and usable
        partials), then each chunk as it arrives. A partial that turns out unusable is taken back with a
        negative delta, so the sum always equals the bytes on disk.
        """
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        report = progress or (lambda _n: None)

        plans = [make_plan(snapshot, f, root) for f in files]
        already = sum(p.file.size if p.done else p.have for p in plans)
        if already:
            report(already)
        check_disk_space(root, sum(p.file.size - p.have for p in plans if not p.done))

        headers = build_hf_headers(token=self.token, library_name="bitinglip")
        # The Range offsets are in raw bytes, so no content coding may sit in between.
        headers["Accept-Encoding"] = "identity"
        with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(self.timeout)) as http:
            for plan in plans:
                _check_cancel(cancel)
                if plan.done:
                    continue
                try:
                    self._fetch(http, headers, snapshot, plan, report, cancel)
                except httpx.HTTPError as e:  # transport errors were retried inside; this is the rest
                    raise HubError(f"downloading {plan.file.path} from {snapshot.repo_id} failed: {e!r}") from None
        remove_empty_dirs(root / PARTIAL_DIR)

    def _fetch(
        self,
        http: httpx.Client,
        headers: dict[str, str],
        snapshot: RepoSnapshot,
        plan: Plan,
        report: Callable[[int], None],
        cancel: threading.Event | None,
    ) -> None:
        f = plan.file
        plan.part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(plan.part, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as out:
            lock(out, f.path)
            # Decide again under the lock: the partial may have moved on since the plan was made.
            have = out.seek(0, os.SEEK_END)
            if not sidecar_matches(plan.sidecar, snapshot, f) or have > f.size:
                have = 0
            if have != plan.have:
                report(have - plan.have)
            if have == 0:
                out.truncate(0)
                write_sidecar(plan.sidecar, snapshot, f, response_etag=None)
            else:
                log.info("hub.resume", repo=snapshot.repo_id, path=f.path, offset=have, size=f.size)

            url = file_url(self.endpoint, snapshot, f)
            fresh_retry_done = have == 0  # a full fetch from byte 0 settles a bad hash for good
            while True:
                have = self._transfer(http, url, headers, snapshot, plan, out, have, report, cancel)
                if handle_matches(out, f):
                    break
                report(-have)
                out.truncate(0)
                write_sidecar(plan.sidecar, snapshot, f, response_etag=None)
                if fresh_retry_done:
                    discard(plan)
                    raise IntegrityError(f"{f.path} from {snapshot.repo_id} does not match the hub's hash")
                # The bytes kept from an earlier run were bad (a crash can leave garbage): fetch once from scratch.
                log.warning("hub.partial_corrupt", repo=snapshot.repo_id, path=f.path)
                fresh_retry_done = True
                have = 0

            out.flush()
            os.fsync(out.fileno())
            plan.final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(plan.part, plan.final)
            with contextlib.suppress(FileNotFoundError):
                plan.sidecar.unlink()

    def _transfer(
        self,
        http: httpx.Client,
        url: str,
        headers: dict[str, str],
        snapshot: RepoSnapshot,
        plan: Plan,
        out: IO[bytes],
        have: int,
        report: Callable[[int], None],
        cancel: threading.Event | None,
    ) -> int:
        """Stream the rest of the file into ``out`` from offset ``have``; returns the final size (== file size)."""
        f = plan.file
        failures = 0
        while have < f.size:
            _check_cancel(cancel)
            request_headers = dict(headers)
            if have > 0:
                request_headers["Range"] = f"bytes={have}-"
                etag = read_sidecar(plan.sidecar).get("response_etag")
                # If-Range needs a strong validator from the server that actually sends the bytes.
                if isinstance(etag, str) and etag and not etag.startswith("W/"):
                    request_headers["If-Range"] = etag
            progressed = False
            try:
                with http.stream("GET", url, headers=request_headers) as response:
                    status = response.status_code
                    if status == 416 and have > 0:
                        # Our partial is longer than what the server holds: it cannot be continued.
                        report(-have)
                        have = restart(out, plan, snapshot)
                        failures += 1
                        self._backoff(failures, cancel, f.path, "range not satisfiable")
                        continue
                    if status == 429 or status >= 500:
                        raise _RetryableStatus(status, response.headers.get("retry-after"))
                    if status >= 400:
                        raise file_status_error(status, response.headers, snapshot.repo_id, snapshot.commit_sha, f.path)
                    if status == 206:
                        start, total = _content_range(response.headers.get("content-range"))
                        if total is not None and total != f.size:
                            _size_mismatch(plan, snapshot, total)
                        if start != have:
                            report(-have)
                            have = restart(out, plan, snapshot)
                            failures += 1
                            continue
                    elif status == 200:
                        length = response.headers.get("content-length")
                        if length is not None and length.isdigit() and int(length) != f.size:
                            _size_mismatch(plan, snapshot, int(length))
                        if have > 0:  # the server ignored our Range (or If-Range failed): start over
                            log.info("hub.range_ignored", repo=snapshot.repo_id, path=f.path)
                            report(-have)
                            have = restart(out, plan, snapshot)
                    else:
                        raise HubError(f"unexpected HTTP {status} for {f.path} from {snapshot.repo_id}")

                    etag = response.headers.get("etag")
                    if etag and etag != read_sidecar(plan.sidecar).get("response_etag"):
                        write_sidecar(plan.sidecar, snapshot, f, response_etag=etag)
                    out.seek(have)
                    for chunk in response.iter_bytes():
                        if cancel is not None and cancel.is_set():
                            out.flush()
                            raise DownloadCancelled(f"download of {snapshot.repo_id} cancelled")
                        if have + len(chunk) > f.size:
                            _size_mismatch(plan, snapshot, None)
                        out.write(chunk)
                        have += len(chunk)
                        progressed = True
                        report(len(chunk))
                    out.flush()
                    if have < f.size:  # a clean end of body, yet short: same as a dropped connection
                        raise httpx.RemoteProtocolError("response ended before the whole file was sent")
            except (httpx.TransportError, _RetryableStatus) as e:
                out.flush()
                failures = 0 if progressed else failures + 1
                if failures > self.max_retries:
                    raise HubUnavailable(
                        f"downloading {f.path} from {snapshot.repo_id} failed after {self.max_retries} retries: {e}"
                    ) from None
                log.warning("hub.download_retry", repo=snapshot.repo_id, path=f.path, offset=have, error=str(e))
                self._backoff(max(failures, 1), cancel, f.path, str(e))
        return have

    def _backoff(self, attempt: int, cancel: threading.Event | None, path: str, why: str) -> None:
        if attempt > self.max_retries:
            raise HubUnavailable(f"downloading {path} failed after {self.max_retries} retries: {why}")
        delay = min(self.backoff_s * (2 ** (attempt - 1)), MAX_BACKOFF_S)
        if cancel is not None:
            if cancel.wait(delay):
                raise DownloadCancelled("download cancelled")
        else:
            time.sleep(delay)


class _RetryableStatus(Exception):
    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}" + (f" (retry after {retry_after}s)" if retry_after else ""))
        self.status = status


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled("download cancelled")


def _size_mismatch(plan: Plan, snapshot: RepoSnapshot, served: int | None) -> NoReturn:
    discard(plan)
    got = f"{served} bytes" if served is not None else "more bytes than that"
    raise IntegrityError(
        f"{plan.file.path} from {snapshot.repo_id}@{snapshot.commit_sha[:12]}: the hub listed "
        f"{plan.file.size} bytes but serves {got}"
    )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE_RE.match(value or "")
    if not match:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (None if total == "*" else int(total))


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    raise AssertionError("unreachable")
