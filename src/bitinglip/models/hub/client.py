"""``HubClient``: search the hub, pin a revision to a commit with its file list, download files.

The library does the API calls, the file URLs, the auth headers and gives its error classes, which
``_hub_errors`` turns into ours; the file transfer is ours (see ``download``).

Reaching the hub. ``HfApi.list_models`` pages through ``huggingface_hub.utils.http_backoff``, which retries
every ``httpx2.NetworkError`` (a refused connection and a name that does not resolve are ``ConnectError``\\s)
five times with growing sleeps and no timeout of its own: a search against a hub that is not there took tens
of seconds to fail. ``HfApi.model_info`` and ``get_hf_file_metadata`` (used by ``resolve``) make one attempt.
The library offers no per-call switch for those retries; its only hook, ``set_client_factory``, swaps the
HTTP client of every user of the library in the process (transformers and vLLM included). So ``search``
first sends one HEAD to the endpoint, with our timeout, through the library's own session (same proxies and
certificates, and the connection is pooled for the call that follows): a hub that cannot be reached fails
there at once, and only a reachable one gets the library's retries. Downloads keep their own retries.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from huggingface_hub import HfApi, constants, get_hf_file_metadata, get_session
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from bitinglip.core import InvalidInput
from bitinglip.models.hub.download import Downloader, file_url
from bitinglip.models.hub.errors import (
    TOKEN_HINT,
    HubError,
    HubFileNotFound,
    HubUnavailable,
    OfflineError,
    RepoNotFound,
    RevisionNotFound,
    gated_error,
    http_error,
    status_of,
)
from bitinglip.models.hub.refs import is_commit_sha, validate_repo_id, validate_revision
from bitinglip.models.hub.types import HubFile, RepoSnapshot, SearchHit

if TYPE_CHECKING:
    from huggingface_hub.hf_api import ModelSort_T

# huggingface_hub 2.x talks through httpx2, 1.x through httpx: catch the transport errors of both.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError,)
try:
    import httpx2

    _TRANSPORT_ERRORS += (httpx2.TransportError,)
except ImportError:  # pragma: no cover
    pass

SEARCH_SORTS: dict[str, ModelSort_T] = {
    "downloads": "downloads",
    "likes": "likes",
    "last_modified": "last_modified",
    "trending": "trending_score",
}


class HubClient:
    """A thin client for the hub API plus a resumable downloader. Thread-safe for distinct destinations.

    Everything here is blocking; callers run it in a worker thread.
    """

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
        self.max_retries = max_retries  # in a row without progress, per file being downloaded
        self.backoff_s = backoff_s
        self._api = HfApi(endpoint=self.endpoint, token=self._token, library_name="bitinglip")

    def __repr__(self) -> str:  # never show the token
        return f"HubClient(endpoint={self.endpoint!r}, offline={self.offline})"

    @property
    def offline(self) -> bool:
        return self._offline or constants.is_offline_mode()

    def search(self, query: str, *, limit: int = 20, sort: str = "downloads") -> list[SearchHit]:
        if sort not in SEARCH_SORTS:
            raise InvalidInput(f"sort must be one of {sorted(SEARCH_SORTS)}, got {sort!r}", param="sort")
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", param="limit")
        if not isinstance(query, str) or len(query) > 200 or any(ord(c) < 32 for c in query):
            raise InvalidInput("search query must be a printable string of at most 200 characters", param="query")
        self._require_online()
        with self._hub_errors():
            self._check_reachable()
            infos = list(
                self._api.list_models(
                    search=query.strip() or None,
                    sort=SEARCH_SORTS[sort],
                    limit=limit,
                    expand=["downloads", "likes", "pipeline_tag", "lastModified", "config"],
                )
            )
        return [
            SearchHit(
                repo_id=info.id,
                downloads=info.downloads,
                likes=info.likes,
                task=info.pipeline_tag,
                last_modified=info.last_modified.isoformat() if info.last_modified else None,
                architectures=_architectures(info.config, info.card_data),
            )
            for info in infos[:limit]
        ]

    def resolve(self, repo_id: str, revision: str | None = None) -> RepoSnapshot:
        """Pin ``revision`` (default: the default branch) to a commit and list its files with sizes and hashes."""
        validate_repo_id(repo_id)
        if revision is not None:
            validate_revision(revision)
        self._require_online()
        with self._hub_errors(repo_id, revision):
            info = self._api.model_info(repo_id, revision=revision, files_metadata=True, timeout=self.timeout)
        sha = info.sha or ""
        if not is_commit_sha(sha):
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
                get_hf_file_metadata(file_url(self.endpoint, snapshot, probe), token=self._token, timeout=self.timeout)
        return snapshot

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

        See ``Downloader.run`` for how ``progress`` counts.
        """
        self._require_online()
        downloader = Downloader(
            endpoint=self.endpoint,
            token=self._token,
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
        )
        downloader.run(snapshot, files, dest, progress=progress, cancel=cancel)

    def _require_online(self) -> None:
        if self.offline:
            raise OfflineError("the hub is not reachable in offline mode (models.offline or HF_HUB_OFFLINE)")

    def _check_reachable(self) -> None:
        """One HEAD to the endpoint, no retry: raises the transport error when the hub cannot be reached.

        Any HTTP answer will do (its status is not looked at); no token is sent.
        """
        get_session().head(self.endpoint, timeout=self.timeout, follow_redirects=False)

    @contextlib.contextmanager
    def _hub_errors(self, repo_id: str | None = None, revision: str | None = None) -> Iterator[None]:
        """Turn the library's exceptions into ours. Order matters: GatedRepoError is a RepositoryNotFoundError."""
        what = repo_id or "the hub"
        try:
            yield
        except OfflineModeIsEnabled:
            raise OfflineError("the hub is not reachable in offline mode (HF_HUB_OFFLINE is set)") from None
        except GatedRepoError as e:
            raise gated_error(what, status_of(e)) from None
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
            raise http_error(what, status_of(e), str(e).splitlines()[0] if str(e) else "") from None
        except _TRANSPORT_ERRORS as e:
            raise HubUnavailable(f"the hub at {self.endpoint} cannot be reached: {type(e).__name__}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            # The library could not make sense of the answer (a proxy page, a changed schema...).
            raise HubError(f"unexpected answer from the hub at {self.endpoint} for {what}: {e!r}") from None


def _architectures(config: object, card_data: object) -> tuple[str, ...] | None:
    for source in (config, getattr(card_data, "__dict__", None)):
        if isinstance(source, dict):
            archs = source.get("architectures")
            if isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs):
                return tuple(archs)
    return None
