"""Talking to the Hugging Face hub: validate ids, resolve a revision to a commit, pick files, download them.

This package is the only part of the project that imports ``huggingface_hub``. ``client`` holds
``HubClient`` (search, resolve, and the library's errors translated into ours), ``download`` and
``partials`` the resumable transfer, ``integrity`` the size and hash checks, ``refs`` the checks on ids and
revisions, ``errors`` the error classes. Which files a model needs is decided in ``bitinglip.models.layout``.
"""

from bitinglip.models.hub.client import SEARCH_SORTS, HubClient
from bitinglip.models.hub.download import check_disk_space
from bitinglip.models.hub.errors import (
    TOKEN_HINT,
    DownloadCancelled,
    DownloadInProgress,
    GatedRepo,
    HubError,
    HubFileNotFound,
    HubUnavailable,
    IntegrityError,
    InvalidRepoId,
    NotEnoughDisk,
    OfflineError,
    RepoNotFound,
    RevisionNotFound,
)
from bitinglip.models.hub.integrity import file_matches
from bitinglip.models.hub.partials import PARTIAL_DIR
from bitinglip.models.hub.refs import parse_ref, validate_repo_id, validate_revision
from bitinglip.models.hub.types import HubFile, RepoSnapshot, SearchHit
from bitinglip.models.layout import select_files

__all__ = [
    "PARTIAL_DIR",
    "SEARCH_SORTS",
    "TOKEN_HINT",
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
    "file_matches",
    "parse_ref",
    "select_files",
    "validate_repo_id",
    "validate_revision",
]
