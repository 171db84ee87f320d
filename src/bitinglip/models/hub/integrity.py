"""Whether bytes on disk are the file the hub lists: its size, then its hash.

LFS files are checked against their sha256; regular files against git's blob sha1 (``sha1("blob <size>\\0" +
content)``), which the hub gives as their ETag. A file the hub gives neither for is checked by size alone.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import IO, Protocol

from bitinglip.models.hub.types import HubFile

CHUNK_SIZE = 1 << 20  # bytes hashed per step

_GIT_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def file_matches(path: Path, f: HubFile) -> bool:
    """``path`` is a regular file with the size and the hash the hub lists for ``f``."""
    if not path.is_file() or path.stat().st_size != f.size:
        return False
    with path.open("rb") as handle:
        return _digest_matches(handle, f)


def handle_matches(handle: IO[bytes], f: HubFile) -> bool:
    """Same check on an open file (flushed first), as the downloader holds it."""
    handle.flush()
    size = handle.seek(0, os.SEEK_END)
    return size == f.size and _digest_matches(handle, f)


def _expected_digest(f: HubFile) -> tuple[_Digest, str] | None:
    """The hash to check ``f`` against: sha256 for LFS files, else git's blob sha1 when the etag is one."""
    if f.sha256 is not None:
        return hashlib.sha256(), f.sha256
    if f.etag is not None and _GIT_SHA1_RE.match(f.etag):
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\x00" % f.size)
        return h, f.etag
    return None


def _digest_matches(handle: IO[bytes], f: HubFile) -> bool:
    spec = _expected_digest(f)
    if spec is None:
        return True
    h, expected = spec
    handle.seek(0)
    while block := handle.read(CHUNK_SIZE):
        h.update(block)
    return h.hexdigest() == expected
