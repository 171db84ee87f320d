"""The hub's errors, as the project's domain errors, and the helpers that build them from an HTTP answer."""

from __future__ import annotations

from collections.abc import Mapping

from bitinglip.core import (
    BitingLipError,
    Conflict,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unavailable,
)

TOKEN_HINT = "set HF_TOKEN or models.hub_token"


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


def status_of(error: BaseException) -> int | None:
    """The HTTP status of a library error that carries a response, if any."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def gated_error(repo_id: str, status: int | None) -> GatedRepo:
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


def http_error(what: str, status: int | None, detail: str) -> BitingLipError:
    if status is not None and (status >= 500 or status == 429):
        return HubUnavailable(f"the hub answered HTTP {status} for {what}: {detail}")
    if status in (401, 403):
        return Unauthorized(f"the hub refused access to {what} (HTTP {status}): check the token ({TOKEN_HINT})")
    return HubError(f"the hub answered HTTP {status} for {what}: {detail}")


def file_status_error(
    status: int, headers: Mapping[str, str], repo_id: str, commit_sha: str, path: str
) -> BitingLipError:
    """The error for a file request the hub refused, read from its status and ``X-Error-Code`` header."""
    code = headers.get("x-error-code")
    if code == "GatedRepo":
        return gated_error(repo_id, status)
    if code == "RepoNotFound" or (status == 401 and code is None):
        return RepoNotFound(f"model {repo_id} not found on the hub (if it is private, a token is needed: {TOKEN_HINT})")
    if code == "RevisionNotFound":
        return RevisionNotFound(f"commit {commit_sha} not found in {repo_id}")
    if code == "EntryNotFound" or status == 404:
        return HubFileNotFound(f"{path} not found in {repo_id}@{commit_sha}")
    return http_error(f"{repo_id}/{path}", status, headers.get("x-error-message", ""))
