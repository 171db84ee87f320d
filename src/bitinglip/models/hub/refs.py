"""Checks on what a user or the hub names: repo ids, revisions, file paths inside a repo. No network, no disk."""

from __future__ import annotations

import re

from bitinglip.core import InvalidInput
from bitinglip.models.hub.errors import InvalidRepoId

MAX_REPO_ID_LENGTH = 96

_PART_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9._/-]{1,100}$")
_COMMIT_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def validate_repo_id(repo_id: str) -> str:
    """Check that ``repo_id`` is a plain ``org/name`` and return it unchanged."""
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


def is_commit_sha(value: str) -> bool:
    """A full 40-hex git commit sha, as the hub pins a revision to."""
    return bool(_COMMIT_SHA_RE.match(value))


def validate_repo_path(path: str) -> str:
    """A file path inside a repo: relative, '/'-separated, no '..' or empty parts (so it cannot escape ``dest``)."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("file path is empty", param="path")
    bad = (
        path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or _DRIVE_RE.match(path) is not None
        or any(part in ("", ".", "..") for part in path.split("/"))
    )
    if bad:
        raise InvalidInput(f"unsafe file path in repo: {path[:200]!r}", param="path")
    return path
