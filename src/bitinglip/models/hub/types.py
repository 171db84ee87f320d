"""The shapes the hub client hands out: a file of a repo, a repo pinned to a commit, a search hit."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bitinglip.core import InvalidInput
from bitinglip.models.hub.refs import validate_repo_path

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class HubFile:
    path: str  # relative path in the repo
    size: int
    sha256: str | None = None  # LFS files only
    # The hub's ETag for the file: the LFS sha256, or the git blob sha1 for a regular file.
    etag: str | None = None

    def __post_init__(self) -> None:
        validate_repo_path(self.path)
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
