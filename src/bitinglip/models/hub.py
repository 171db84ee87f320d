"""Talking to the Hugging Face hub: validate ids, resolve a revision to a commit, pick files, download them.

This is the only module of the project that imports ``huggingface_hub``. The library is used for what it
does well (the API calls, the file URLs, the auth headers, its error classes); the file transfer itself is
ours, because the library's downloads do not resume across processes: each attempt writes to a
process-unique temporary file, so a pull killed half-way starts again from byte 0. Here every file is
streamed into a stable ``dest/.partial/<path>.part`` with a small JSON sidecar saying which blob it holds,
and a later call (in any process) continues it with an HTTP ``Range`` request.

Everything here is blocking; callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import httpx
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata
from huggingface_hub.utils import build_hf_headers

from bitinglip.core.errors import (
    BitingLipError,
    Conflict,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unavailable,
)
from bitinglip.core.logging import get_logger

try:  # fcntl is POSIX-only; without it two concurrent pulls of one file are simply not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

# huggingface_hub 2.x talks through httpx2, 1.x through httpx: catch the transport errors of both.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError,)
try:
    import httpx2

    _TRANSPORT_ERRORS += (httpx2.TransportError,)
except ImportError:  # pragma: no cover
    pass

log = get_logger(__name__)

__all__ = [
    "DownloadCancelled",
    "DownloadInProgress",
    "GatedRepo",
    "HubClient",
    "HubError",
    "HubFile",
    "HubFileNotFound",
    "HubUnavailable",
    "IntegrityError",
    "InvalidRepoId",
    "NotEnoughDisk",
    "OfflineError",
    "RepoNotFound",
    "RepoSnapshot",
    "RevisionNotFound",
    "SearchHit",
    "check_disk_space",
    "parse_ref",
    "select_files",
    "validate_repo_id",
]

PARTIAL_DIR = ".partial"
CHUNK_SIZE = 1 << 20  # bytes hashed or written per step
TOKEN_HINT = "set HF_TOKEN or models.hub_token"
SEARCH_SORTS = {
    "downloads": "downloads",
    "likes": "likes",
    "last_modified": "last_modified",
    "trending": "trending_score",
}
MAX_REPO_ID_LENGTH = 96

_PART_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9._/-]{1,100}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


# --------------------------------------------------------------------------------------------------- errors


class InvalidRepoId(InvalidInput):
    code = "invalid_repo_id"


class RepoNotFound(NotFound):
    code = "repo_not_found"


class RevisionNotFound(NotFound):
    code = "revision_not_found"


class HubFileNotFound(NotFound):
    code = "file_not_found"


class GatedRepo(Unauthorized):
    code = "gated_repo"


class HubUnavailable(Unavailable):
    code = "hub_unavailable"


class OfflineError(Unavailable):
    code = "offline"


class HubError(BitingLipError):
    """The hub answered something we cannot use (an unexpected status or body)."""

    status = 502
    code = "hub_error"


class IntegrityError(BitingLipError):
    """A downloaded file does not have the size or hash the hub announced."""

    status = 502
    code = "integrity_error"


class NotEnoughDisk(InsufficientStorage):
    code = "not_enough_disk"


class DownloadCancelled(BitingLipError):
    status = 499
    type = "cancelled"
    code = "download_cancelled"


class DownloadInProgress(Conflict):
    code = "download_in_progress"


# ------------------------------------------------------------------------------------------- validation


def validate_repo_id(repo_id: str) -> str:
    """Check that ``repo_id`` is a plain ``org/name`` and return it unchanged. No network, no disk."""
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidRepoId("repo id is empty", param="repo_id")
    shown = repr(repo_id[:120])
    if len(repo_id) > MAX_REPO_ID_LENGTH:
        raise InvalidRepoId(f"repo id {shown} is longer than {MAX_REPO_ID_LENGTH} characters", param="repo_id")
    if any(c.isspace() for c in repo_id):
        raise InvalidRepoId(f"repo id {shown} contains whitespace", param="repo_id")
    if "\\" in repo_id:
        raise InvalidRepoId(f"repo id {shown} contains a backslash", param="repo_id")
    if repo_id.startswith("/"):
        raise InvalidRepoId(f"repo id {shown} is an absolute path, expected 'org/name'", param="repo_id")
    if ".." in repo_id or "--" in repo_id:
        raise InvalidRepoId(f"repo id {shown} contains '..' or '--'", param="repo_id")
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise InvalidRepoId(f"repo id {shown} must have exactly one '/', as in 'org/name'", param="repo_id")
    for label, part in zip(("organisation", "name"), parts, strict=True):
        if not part:
            raise InvalidRepoId(f"repo id {shown} has an empty {label}", param="repo_id")
        if not _PART_RE.match(part):
            raise InvalidRepoId(
                f"repo id {shown}: the {label} may only use letters, digits, '.', '_' and '-'", param="repo_id"
            )
        if part[0] in ".-" or part[-1] in ".-":
            raise InvalidRepoId(f"repo id {shown}: the {label} cannot start or end with '.' or '-'", param="repo_id")
    return repo_id


def validate_revision(revision: str) -> str:
    """A branch, tag or commit sha: a conservative charset, no '..', no leading or trailing '/'."""
    if (
        not isinstance(revision, str)
        or not _REVISION_RE.match(revision)
        or ".." in revision
        or revision.startswith(("/", "-"))
        or revision.endswith("/")
    ):
        raise InvalidInput(f"revision {str(revision)[:120]!r} is not a valid branch, tag or commit", param="revision")
    return revision


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; ``"org/name"`` -> ``("org/name", None)``."""
    if not isinstance(ref, str):
        raise InvalidRepoId("model reference must be a string", param="repo_id")
    repo_id, sep, revision = ref.partition("@")
    validate_repo_id(repo_id)
    if not sep:
        return repo_id, None
    return repo_id, validate_revision(revision)


def _validate_repo_path(path: str) -> str:
    """A file path inside a repo: relative, '/'-separated, no '..' or empty parts (so it cannot escape ``dest``)."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("file path is empty", param="path")
    bad = (
        path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or re.match(r"^[A-Za-z]:", path) is not None
        or any(part in ("", ".", "..") for part in path.split("/"))
    )
    if bad:
        raise InvalidInput(f"unsafe file path in repo: {path[:200]!r}", param="path")
    return path


# ------------------------------------------------------------------------------------------ data shapes


@dataclass(frozen=True)
class HubFile:
    path: str  # relative path in the repo
    size: int
    sha256: str | None = None  # LFS files only
    # The hub's ETag for the file: the LFS sha256, or the git blob sha1 for a regular file.
    etag: str | None = None

    def __post_init__(self) -> None:
        _validate_repo_path(self.path)
        if not isinstance(self.size, int) or self.size < 0:
            raise InvalidInput(f"bad size for {self.path!r}: {self.size!r}", param="size")
        if self.sha256 is not None and not _SHA256_RE.match(self.sha256):
            raise InvalidInput(f"bad sha256 for {self.path!r}", param="sha256")


@dataclass(frozen=True)
class RepoSnapshot:
    repo_id: str
    revision: str  # what the user asked: branch, tag or sha
    commit_sha: str  # the 40-hex commit it resolved to
    files: tuple[HubFile, ...]
    gated: bool
    architectures: tuple[str, ...] | None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class SearchHit:
    repo_id: str
    downloads: int | None
    likes: int | None
    task: str | None
    last_modified: str | None  # ISO 8601
    architectures: tuple[str, ...] | None


# --------------------------------------------------------------------------------------- file selection

_TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "added_tokens.json",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
        "preprocessor_config.json",
        "processor_config.json",
    }
)
_CONFIG_FILES = frozenset({"config.json", "generation_config.json", "model.safetensors.index.json"})
_DOC_PREFIXES = ("readme", "license", "licence", "notice", "use_policy")
# Trainer leftovers that share the .bin extension but are not weights.
_TRAINING_STATE = ("training_args", "optimizer", "scheduler", "rng_state")


def select_files(
    files: Iterable[HubFile],
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
) -> list[HubFile]:
    """Keep what vLLM needs from a repo, then apply the user's fnmatch patterns (which can only narrow).

    Kept: configs, tokenizer and chat-template files, README/LICENSE and the safetensors weights with their
    index, all at the repo root (vLLM reads a HF-style directory from its root). PyTorch ``*.bin`` weights
    are a fallback kept only when the repo has no safetensors at all. Code (``*.py``) and every other format
    (gguf, onnx, openvino, flax, tf...) are dropped.
    """
    files = list(files)
    root_safetensors = [f for f in files if "/" not in f.path and f.path.endswith(".safetensors")]
    has_safetensors = bool(root_safetensors)
    # Mistral repos ship the same weights twice: HF shards and one consolidated.safetensors for mistral-format loading.
    has_hf_shards = any(not f.path.startswith("consolidated") for f in root_safetensors)

    def wanted(f: HubFile) -> bool:
        path = f.path
        if "/" in path:
            top, _, rest = path.partition("/")
            # Extra chat templates are read by transformers from this folder; nothing else below the root is.
            return top == "additional_chat_templates" and "/" not in rest and rest.endswith(".jinja")
        name = path.lower()
        if name.endswith(".safetensors"):
            return not (name.startswith("consolidated") and has_hf_shards)
        if name in _CONFIG_FILES or name in _TOKENIZER_FILES or name.endswith(".tiktoken"):
            return True
        if name.startswith(_DOC_PREFIXES) and not name.endswith(".py"):
            return True
        if not has_safetensors:  # PyTorch weights only as a fallback
            if name == "pytorch_model.bin.index.json":
                return True
            return name.endswith(".bin") and not name.startswith(_TRAINING_STATE)
        return False

    selected = [f for f in files if wanted(f)]
    if allow_patterns:
        allow = _directory_patterns(allow_patterns)
        selected = [f for f in selected if any(fnmatch.fnmatchcase(f.path, p) for p in allow)]
    if ignore_patterns:
        ignore = _directory_patterns(ignore_patterns)
        selected = [f for f in selected if not any(fnmatch.fnmatchcase(f.path, p) for p in ignore)]
    return selected


def _directory_patterns(patterns: Sequence[str]) -> list[str]:
    # Same convention as huggingface_hub: "folder/" means everything below it.
    return [p + "*" if p.endswith("/") else p for p in patterns]


# --------------------------------------------------------------------------------------------- disk space


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


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------- the client


@dataclass
class _Plan:
    """What one file needs, decided before the first byte is fetched."""

    file: HubFile
    final: Path
    part: Path
    sidecar: Path
    done: bool  # the final file is there and verified
    have: int  # bytes of a matching partial, counted as done at the start


class HubClient:
    """A thin client for the hub API plus a resumable downloader. Thread-safe for distinct destinations."""

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        offline: bool = False,
        timeout: float = 30.0,
        *,
        max_retries: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        if not self.endpoint.startswith(("http://", "https://")):
            raise InvalidInput(f"hub endpoint must be an http(s) URL, got {self.endpoint!r}", param="hub_endpoint")
        self._token = token or None  # None: the library reads HF_TOKEN / the saved token itself
        self._offline = offline
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._api = HfApi(endpoint=self.endpoint, token=self._token, library_name="bitinglip")

    def __repr__(self) -> str:  # never show the token
        return f"HubClient(endpoint={self.endpoint!r}, offline={self.offline})"

    @property
    def offline(self) -> bool:
        return self._offline or constants.is_offline_mode()

    # ----------------------------------------------------------------------------------------- search

    def search(self, query: str, *, limit: int = 20, sort: str = "downloads") -> list[SearchHit]:
        if sort not in SEARCH_SORTS:
            raise InvalidInput(f"sort must be one of {sorted(SEARCH_SORTS)}, got {sort!r}", param="sort")
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", param="limit")
        if not isinstance(query, str) or len(query) > 200 or any(ord(c) < 32 for c in query):
            raise InvalidInput("search query must be a printable string of at most 200 characters", param="query")
        self._require_online()
        with self._hub_errors():
            infos = list(
                self._api.list_models(
                    search=query.strip() or None,
                    sort=SEARCH_SORTS[sort],  # type: ignore[arg-type]
                    limit=limit,
                    expand=["downloads", "likes", "pipeline_tag", "lastModified", "config"],
                )
            )
        hits: list[SearchHit] = []
        for info in infos[:limit]:
            hits.append(
                SearchHit(
                    repo_id=info.id,
                    downloads=info.downloads,
                    likes=info.likes,
                    task=info.pipeline_tag,
                    last_modified=info.last_modified.isoformat() if info.last_modified else None,
                    architectures=_architectures(info.config, info.card_data),
                )
            )
        return hits

    # ---------------------------------------------------------------------------------------- resolve

    def resolve(self, repo_id: str, revision: str | None = None) -> RepoSnapshot:
        """Pin ``revision`` (default: the default branch) to a commit and list its files with sizes and hashes."""
        validate_repo_id(repo_id)
        if revision is not None:
            validate_revision(revision)
        self._require_online()
        with self._hub_errors(repo_id, revision):
            info = self._api.model_info(repo_id, revision=revision, files_metadata=True, timeout=self.timeout)
        sha = info.sha or ""
        if not _SHA1_RE.match(sha):
            raise HubError(f"the hub gave no valid commit sha for {repo_id}@{revision or 'main'}")
        files: list[HubFile] = []
        for sib in info.siblings or []:
            if sib.size is None:
                raise HubError(f"the hub gave no size for {sib.rfilename!r} in {repo_id}")
            try:
                files.append(
                    HubFile(
                        path=sib.rfilename,
                        size=int(sib.size),
                        sha256=sib.lfs.sha256 if sib.lfs else None,
                        etag=sib.lfs.sha256 if sib.lfs else sib.blob_id,
                    )
                )
            except InvalidInput as e:  # a hub listing a path like "../x" is not to be trusted with our disk
                raise HubError(f"the hub listed an unusable file in {repo_id}: {e.message}") from None
        snapshot = RepoSnapshot(
            repo_id=repo_id,
            revision=revision or "main",
            commit_sha=sha,
            files=tuple(files),
            gated=bool(info.gated),
            architectures=_architectures(info.config, info.card_data),
        )
        if snapshot.gated and files:
            # A gated repo's metadata is public; only its files need an accepted token. Probe one now so the
            # user hears about the token before a pull is queued, not half-way through it.
            probe = next((f for f in files if f.path == "config.json"), files[0])
            with self._hub_errors(repo_id, revision):
                get_hf_file_metadata(self._url(snapshot, probe), token=self._token, timeout=self.timeout)
        return snapshot

    # --------------------------------------------------------------------------------------- download

    def download(
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
        self._require_online()
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        report = progress or (lambda _n: None)

        plans = [self._plan(snapshot, f, root) for f in files]
        already = sum(p.file.size if p.done else p.have for p in plans)
        if already:
            report(already)
        check_disk_space(root, sum(p.file.size - p.have for p in plans if not p.done))

        headers = build_hf_headers(token=self._token, library_name="bitinglip")
        # The Range offsets are in raw bytes, so no content coding may sit in between.
        headers["Accept-Encoding"] = "identity"
        timeout = httpx.Timeout(self.timeout)
        with httpx.Client(follow_redirects=True, timeout=timeout) as http:
            for plan in plans:
                _check_cancel(cancel)
                if plan.done:
                    continue
                try:
                    self._fetch(http, headers, snapshot, plan, report, cancel)
                except httpx.HTTPError as e:  # transport errors were retried inside; this is the rest
                    raise HubError(f"downloading {plan.file.path} from {snapshot.repo_id} failed: {e!r}") from None
        _remove_empty_dirs(root / PARTIAL_DIR)

    # ------------------------------------------------------------------------------------- internals

    def _require_online(self) -> None:
        if self.offline:
            raise OfflineError("the hub is not reachable in offline mode (models.offline or HF_HUB_OFFLINE)")

    def _url(self, snapshot: RepoSnapshot, f: HubFile) -> str:
        return hf_hub_url(snapshot.repo_id, f.path, revision=snapshot.commit_sha, endpoint=self.endpoint)

    @contextlib.contextmanager
    def _hub_errors(self, repo_id: str | None = None, revision: str | None = None) -> Iterator[None]:
        """Turn the library's exceptions into ours. Order matters: GatedRepoError is a RepositoryNotFoundError."""
        what = repo_id or "the hub"
        try:
            yield
        except OfflineModeIsEnabled:
            raise OfflineError("the hub is not reachable in offline mode (HF_HUB_OFFLINE is set)") from None
        except GatedRepoError as e:
            raise _gated_error(what, _status_of(e)) from None
        except RevisionNotFoundError:
            raise RevisionNotFound(f"revision {revision!r} not found in {what}", param="revision") from None
        except RemoteEntryNotFoundError as e:
            raise HubFileNotFound(f"file not found in {what}: {e}") from None
        except RepositoryNotFoundError:
            raise RepoNotFound(
                f"model {what} not found on the hub (if it is private, a token is needed: {TOKEN_HINT})",
                param="repo_id",
            ) from None
        except HfHubHTTPError as e:
            raise _http_error(what, _status_of(e), str(e).splitlines()[0] if str(e) else "") from None
        except _TRANSPORT_ERRORS as e:
            raise HubUnavailable(f"the hub at {self.endpoint} cannot be reached: {type(e).__name__}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            # The library could not make sense of the answer (a proxy page, a changed schema...).
            raise HubError(f"unexpected answer from the hub at {self.endpoint} for {what}: {e!r}") from None

    def _plan(self, snapshot: RepoSnapshot, f: HubFile, root: Path) -> _Plan:
        if f.path == PARTIAL_DIR or f.path.startswith(PARTIAL_DIR + "/"):
            raise InvalidInput(f"repo file {f.path!r} collides with the download work folder", param="path")
        final = _inside(root, f.path)
        part = _inside(root, f"{PARTIAL_DIR}/{f.path}.part")
        sidecar = part.with_name(part.name + ".json")
        plan = _Plan(file=f, final=final, part=part, sidecar=sidecar, done=False, have=0)
        if final.is_file() and final.stat().st_size == f.size and _content_ok(final, f):
            plan.done = True
            _discard_stale(plan)
            return plan
        if part.is_file() and _sidecar_matches(sidecar, snapshot, f):
            size = part.stat().st_size
            plan.have = size if size <= f.size else 0
        return plan

    def _fetch(
        self,
        http: httpx.Client,
        headers: dict[str, str],
        snapshot: RepoSnapshot,
        plan: _Plan,
        report: Callable[[int], None],
        cancel: threading.Event | None,
    ) -> None:
        f = plan.file
        plan.part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(plan.part, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as out:
            _lock(out, f.path)
            # Decide again under the lock: the partial may have moved on since the plan was made.
            have = out.seek(0, os.SEEK_END)
            if not _sidecar_matches(plan.sidecar, snapshot, f) or have > f.size:
                have = 0
            if have != plan.have:
                report(have - plan.have)
            if have == 0:
                out.truncate(0)
                _write_sidecar(plan.sidecar, snapshot, f, response_etag=None)
            else:
                log.info("hub.resume", repo=snapshot.repo_id, path=f.path, offset=have, size=f.size)

            url = self._url(snapshot, f)
            fresh_retry_done = have == 0  # a full fetch from byte 0 settles a bad hash for good
            while True:
                have = self._transfer(http, url, headers, snapshot, plan, out, have, report, cancel)
                if _content_ok_handle(out, f):
                    break
                report(-have)
                out.truncate(0)
                _write_sidecar(plan.sidecar, snapshot, f, response_etag=None)
                if fresh_retry_done:
                    _discard(plan)
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
        plan: _Plan,
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
                etag = _read_sidecar(plan.sidecar).get("response_etag")
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
                        have = _restart(out, plan, snapshot)
                        failures += 1
                        self._backoff(failures, cancel, f.path, "range not satisfiable")
                        continue
                    if status == 429 or status >= 500:
                        raise _RetryableStatus(status, response.headers.get("retry-after"))
                    if status >= 400:
                        _raise_for_file_status(response, snapshot, f)
                    if status == 206:
                        start, total = _content_range(response.headers.get("content-range"))
                        if total is not None and total != f.size:
                            _size_mismatch(plan, snapshot, total)
                        if start != have:
                            report(-have)
                            have = _restart(out, plan, snapshot)
                            failures += 1
                            continue
                    elif status == 200:
                        length = response.headers.get("content-length")
                        if length is not None and length.isdigit() and int(length) != f.size:
                            _size_mismatch(plan, snapshot, int(length))
                        if have > 0:  # the server ignored our Range (or If-Range failed): start over
                            log.info("hub.range_ignored", repo=snapshot.repo_id, path=f.path)
                            report(-have)
                            have = _restart(out, plan, snapshot)
                    else:
                        raise HubError(f"unexpected HTTP {status} for {f.path} from {snapshot.repo_id}")

                    etag = response.headers.get("etag")
                    if etag and etag != _read_sidecar(plan.sidecar).get("response_etag"):
                        _write_sidecar(plan.sidecar, snapshot, f, response_etag=etag)
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
        delay = min(self.backoff_s * (2 ** (attempt - 1)), 30.0)
        if cancel is not None:
            if cancel.wait(delay):
                raise DownloadCancelled("download cancelled")
        else:
            time.sleep(delay)


class _RetryableStatus(Exception):
    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}" + (f" (retry after {retry_after}s)" if retry_after else ""))
        self.status = status


# ------------------------------------------------------------------------------------------------ helpers


def _architectures(config: Any, card_data: Any) -> tuple[str, ...] | None:
    for source in (config, getattr(card_data, "__dict__", None)):
        if isinstance(source, dict):
            archs = source.get("architectures")
            if isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs):
                return tuple(archs)
    return None


def _status_of(e: HfHubHTTPError) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _gated_error(repo_id: str, status: int | None) -> GatedRepo:
    if status == 403:
        return GatedRepo(
            f"{repo_id} is a gated model and the token given has no access to it: "
            "accept its terms on the hub with the account that owns the token",
            param="repo_id",
        )
    return GatedRepo(
        f"{repo_id} is a gated model: a token with access is needed ({TOKEN_HINT}), "
        "and its terms must be accepted on the hub",
        param="repo_id",
    )


def _http_error(what: str, status: int | None, detail: str) -> BitingLipError:
    if status is not None and (status >= 500 or status == 429):
        return HubUnavailable(f"the hub answered HTTP {status} for {what}: {detail}")
    if status in (401, 403):
        return Unauthorized(f"the hub refused access to {what} (HTTP {status}): check the token ({TOKEN_HINT})")
    return HubError(f"the hub answered HTTP {status} for {what}: {detail}")


def _raise_for_file_status(response: httpx.Response, snapshot: RepoSnapshot, f: HubFile) -> NoReturn:
    status = response.status_code
    code = response.headers.get("x-error-code")
    if code == "GatedRepo":
        raise _gated_error(snapshot.repo_id, status)
    if code == "RepoNotFound" or (status == 401 and code is None):
        raise RepoNotFound(
            f"model {snapshot.repo_id} not found on the hub (if it is private, a token is needed: {TOKEN_HINT})"
        )
    if code == "RevisionNotFound":
        raise RevisionNotFound(f"commit {snapshot.commit_sha} not found in {snapshot.repo_id}")
    if code == "EntryNotFound" or status == 404:
        raise HubFileNotFound(f"{f.path} not found in {snapshot.repo_id}@{snapshot.commit_sha}")
    raise _http_error(f"{snapshot.repo_id}/{f.path}", status, response.headers.get("x-error-message", ""))


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled("download cancelled")


def _inside(root: Path, rel: str) -> Path:
    """``root/rel`` with every symlink resolved, refused unless it stays below ``root``."""
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or target == root:
        raise InvalidInput(f"file path {rel!r} would be written outside {root}", param="path")
    return target


def _lock(handle: IO[bytes], path: str) -> None:
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DownloadInProgress(f"{path} is being downloaded by another process") from None


def _sidecar_record(snapshot: RepoSnapshot, f: HubFile, response_etag: str | None) -> dict[str, Any]:
    return {
        "repo_id": snapshot.repo_id,
        "commit_sha": snapshot.commit_sha,
        "path": f.path,
        "size": f.size,
        "sha256": f.sha256,
        "etag": f.etag,
        "response_etag": response_etag,
    }


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_sidecar(sidecar: Path, snapshot: RepoSnapshot, f: HubFile, response_etag: str | None) -> None:
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(_sidecar_record(snapshot, f, response_etag)))
    os.replace(tmp, sidecar)


def _sidecar_matches(sidecar: Path, snapshot: RepoSnapshot, f: HubFile) -> bool:
    """Whether the partial next to ``sidecar`` holds the start of the very blob ``f`` names."""
    data = _read_sidecar(sidecar)
    if data.get("repo_id") != snapshot.repo_id or data.get("path") != f.path or data.get("size") != f.size:
        return False
    if f.sha256 is not None and data.get("sha256") == f.sha256:
        return True  # same LFS blob: resumable even if the branch moved to another commit
    return data.get("commit_sha") == snapshot.commit_sha and data.get("etag") == f.etag


def _restart(out: IO[bytes], plan: _Plan, snapshot: RepoSnapshot) -> int:
    out.seek(0)
    out.truncate(0)
    _write_sidecar(plan.sidecar, snapshot, plan.file, response_etag=None)
    return 0


def _discard(plan: _Plan) -> None:
    for p in (plan.part, plan.sidecar):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _discard_stale(plan: _Plan) -> None:
    """Drop a partial left next to a finished file, unless another process is still writing it."""
    try:
        fd = os.open(plan.part, os.O_RDWR)
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            plan.sidecar.unlink()
        return
    with os.fdopen(fd, "r+b") as handle:
        try:
            _lock(handle, plan.file.path)
        except DownloadInProgress:
            return
        _discard(plan)


def _size_mismatch(plan: _Plan, snapshot: RepoSnapshot, served: int | None) -> NoReturn:
    _discard(plan)
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


def _hasher(f: HubFile) -> tuple[Any, str] | None:
    """The hash to check ``f`` against: sha256 for LFS files, else git's blob sha1 when the etag is one."""
    if f.sha256 is not None:
        return hashlib.sha256(), f.sha256
    if f.etag is not None and _SHA1_RE.match(f.etag):
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\x00" % f.size)
        return h, f.etag
    return None


def _digest_matches(handle: IO[bytes], f: HubFile) -> bool:
    spec = _hasher(f)
    if spec is None:
        return True
    h, expected = spec
    handle.seek(0)
    while block := handle.read(CHUNK_SIZE):
        h.update(block)
    return bool(h.hexdigest() == expected)


def _content_ok(path: Path, f: HubFile) -> bool:
    with path.open("rb") as handle:
        return _digest_matches(handle, f)


def _content_ok_handle(handle: IO[bytes], f: HubFile) -> bool:
    handle.flush()
    size = handle.seek(0, os.SEEK_END)
    return size == f.size and _digest_matches(handle, f)


def _remove_empty_dirs(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, _dirnames, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # fails, as wanted, on anything not empty
