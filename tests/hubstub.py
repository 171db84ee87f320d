"""A local stand-in for the Hugging Face hub's HTTP API, for tests (the real hub is not reachable from CI).

It answers the endpoints the real ``huggingface_hub`` client calls, with the same JSON shapes and headers:

- ``GET /api/models/{org}/{name}`` and ``.../revision/{rev}`` (``model_info``; ``?blobs=true`` adds sizes,
  blob ids and LFS metadata to ``siblings``),
- ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]`` (``list_repo_tree``),
- ``GET /api/models?search=&sort=&limit=&expand=&full=&config=`` (``list_models``),
- ``HEAD``/``GET /{org}/{name}/resolve/{rev}/{path}``: regular files are served there with ``ETag`` (the git
  blob sha1); LFS files answer ``302`` to ``{cdn}/cdn-lfs/{sha256}`` with ``X-Linked-Etag``/``X-Linked-Size``, as the
  real hub redirects to its CDN. Both carry ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges: bytes`` and
  honour ``Range`` (``206`` + ``Content-Range``, ``416`` past the end) and ``If-Range``. The CDN is a second
  server on another port, so (as with the real hub) clients stop their metadata HEAD at the redirect and do not
  forward the ``Authorization`` header to it.

Errors carry ``X-Error-Code`` the way the client reads them: ``RepoNotFound`` (404), ``RevisionNotFound`` (404),
``EntryNotFound`` (404), ``GatedRepo`` (401 without a token, 403 with a wrong one; as on the real hub a gated
repo's metadata stays public and only its files are refused).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 1024  # files above this many bytes are stored with LFS, like a repo's .gitattributes would do
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".model")
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(data)}\n".encode()


def is_lfs(path: str, data: bytes) -> bool:
    return len(data) > LFS_THRESHOLD or path.endswith(LFS_SUFFIXES)


@dataclass
class _Commit:
    sha: str
    files: dict[str, bytes]
    date: datetime


@dataclass
class _Repo:
    repo_id: str
    gated: bool = False
    token: str | None = None
    config: dict[str, Any] | None = None
    pipeline_tag: str | None = "text-generation"
    downloads: int = 0
    likes: int = 0
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag name -> commit sha
    created: datetime = _EPOCH


class HubStub:
    """A threaded HTTP server on 127.0.0.1 that behaves like the hub for the calls this project makes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._clock = 0
        # (method, path with query, headers with lower-case names), in arrival order.
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.throttle_bytes_per_s: int | None = None
        self.drop_after_bytes: int | None = None  # next file GET: close after this many body bytes (then reset)
        self.force_status: int | None = None  # answer every request with this status (e.g. 503)
        self.honour_range = True  # False: ignore Range headers, like some proxies do
        self.tampered: dict[tuple[str, str], bytes] = {}  # (repo_id, path) -> bytes served instead of the real ones
        self._server: ThreadingHTTPServer | None = None
        self._cdn: ThreadingHTTPServer | None = None  # LFS bytes, on another origin like the hub's CDN

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return _server_url(self._server)

    @property
    def cdn_url(self) -> str:
        return _server_url(self._cdn)

    def start(self) -> HubStub:
        stub = self

        class Handler(_Handler):
            hub = stub

        servers = []
        for name in ("hubstub", "hubstub-cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
            ).start()
            servers.append(server)
        self._server, self._cdn = servers
        return self

    def stop(self) -> None:
        for server in (self._server, self._cdn):
            if server is not None:
                server.shutdown()
                server.server_close()
        self._server = self._cdn = None

    def __enter__(self) -> HubStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ content

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        revision: str = "main",
        tags: dict[str, str] | None = None,
        gated: bool = False,
        token: str | None = None,
        config: dict[str, Any] | None = None,
        pipeline_tag: str | None = "text-generation",
        downloads: int = 0,
        likes: int = 0,
    ) -> str:
        """Add a commit holding exactly ``files`` and point ``revision`` at it; returns its 40-hex sha.

        ``tags`` maps tag names to a target: ``""`` for this new commit, else an existing ref or commit sha.
        Calling it again for the same repo adds a commit; older commits stay reachable by their sha.
        """
        if config is None and "config.json" in files:
            try:
                config = json.loads(files["config.json"])
            except ValueError:
                config = None
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                repo = self._repos[repo_id] = _Repo(repo_id=repo_id)
            repo.gated, repo.token, repo.pipeline_tag = gated, token, pipeline_tag
            repo.downloads, repo.likes = downloads, likes
            if config is not None:
                repo.config = {k: v for k, v in config.items() if k in ("architectures", "model_type")}
            parent = repo.refs.get(revision, "")
            digest = hashlib.sha1(f"{repo_id}\n{parent}\n".encode(), usedforsecurity=False)
            for path in sorted(files):
                digest.update(f"{path}\x00{hashlib.sha256(files[path]).hexdigest()}\n".encode())
            sha = digest.hexdigest()
            self._clock += 1
            repo.commits[sha] = _Commit(sha=sha, files=dict(files), date=_EPOCH + timedelta(days=self._clock))
            repo.refs[revision] = sha
            for tag, target in (tags or {}).items():
                repo.refs[tag] = sha if target in ("", "HEAD") else self._resolve(repo, target) or target
            return sha

    def add_repo_from_dir(self, repo_id: str, path: Path, **kw: Any) -> str:
        root = Path(path)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return self.add_repo(repo_id, files, **kw)

    def tamper(self, repo_id: str, path: str, data: bytes) -> None:
        """Serve ``data`` for ``path`` while the metadata keeps announcing the original size and hash."""
        self.tampered[(repo_id, path)] = data

    def requests_for(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, dict[str, str]]]:
        with self._lock:
            return [r for r in self.requests if (method is None or r[0] == method) and contains in r[1]]

    def file_gets(self) -> list[tuple[str, str, dict[str, str]]]:
        """GETs of file bodies: on /resolve/ (regular files) or /cdn-lfs/ (LFS)."""
        return [r for r in self.requests_for("GET") if "/resolve/" in r[1] or r[1].startswith("/cdn-lfs/")]

    # --------------------------------------------------------------------------------------- internals

    @staticmethod
    def _resolve(repo: _Repo, rev: str) -> str | None:
        if rev in repo.refs:
            return repo.refs[rev]
        if rev in repo.commits:
            return rev
        return None

    def _log(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, path, headers))

    def _take_drop(self) -> int | None:
        with self._lock:
            n, self.drop_after_bytes = self.drop_after_bytes, None
            return n

    def _blob(self, sha256: str) -> bytes | None:
        with self._lock:
            for repo in self._repos.values():
                for commit in repo.commits.values():
                    for path, data in commit.files.items():
                        if hashlib.sha256(data).hexdigest() == sha256:
                            return self.tampered.get((repo.repo_id, path), data)
        return None


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.1"  # keep-alive and Content-Length framing, like the real hub

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def handle(self) -> None:
        # Clients drop idle keep-alive connections (or get killed): not worth a traceback.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            super().handle()

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    # --------------------------------------------------------------------------------------- routing

    def _dispatch(self, method: str) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.hub._log(method, self.path, headers)
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        query_all = parse_qs(split.query)
        # Split before unquoting: the client quotes a revision like "refs/pr/1" into one segment.
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        try:
            if self.hub.force_status is not None:
                raise _HubError(self.hub.force_status, None, "forced failure")
            if segments[:2] == ["api", "models"]:
                if method != "GET":
                    raise _HubError(405, None, "method not allowed")
                self._api(segments[2:], query, query_all)
            elif segments and segments[0] == "cdn-lfs" and len(segments) == 2:
                data = self.hub._blob(segments[1])
                if data is None:
                    raise _HubError(404, None, "no such blob")
                self._send_file(method, data, etag=f'"{segments[1]}"', extra={})
            elif len(segments) >= 5 and segments[2] == "resolve":
                self._resolve_file(method, f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:]))
            else:
                raise _HubError(404, None, "not found")
        except _HubError as e:
            self._send_error(method, e)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed download): nothing to answer

    def _repo_and_commit(self, repo_id: str, rev: str | None) -> tuple[_Repo, _Commit]:
        repo = self.hub._repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        sha = self.hub._resolve(repo, rev or "main")
        if sha is None:
            raise _HubError(404, "RevisionNotFound", "Invalid rev id: " + (rev or "main"))
        return repo, repo.commits[sha]

    def _api(self, rest: list[str], query: dict[str, str], query_all: dict[str, list[str]]) -> None:
        if not rest or rest == [""]:
            self._send_json(self._list_models(query, query_all))
            return
        if len(rest) < 2:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        repo_id = f"{rest[0]}/{rest[1]}"
        tail = rest[2:]
        if not tail:
            rev = None
        elif tail[0] == "revision" and len(tail) == 2:
            rev = tail[1]
        elif tail[0] == "tree" and len(tail) >= 2:
            repo, commit = self._repo_and_commit(repo_id, tail[1])
            self._send_json(self._tree(commit, "/".join(tail[2:]), _truthy(query.get("recursive"))))
            return
        else:
            raise _HubError(404, None, "not found")
        repo, commit = self._repo_and_commit(repo_id, rev)
        self._send_json(self._model_info(repo, commit, blobs=_truthy(query.get("blobs"))))

    # ------------------------------------------------------------------------------------------ JSON

    def _model_info(self, repo: _Repo, commit: _Commit, *, blobs: bool) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for path in sorted(commit.files):
            data = commit.files[path]
            entry: dict[str, Any] = {"rfilename": path}
            if blobs:
                lfs = is_lfs(path, data)
                entry["size"] = len(data)
                entry["blobId"] = git_blob_sha1(lfs_pointer(data) if lfs else data)
                if lfs:
                    entry["lfs"] = {
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": len(lfs_pointer(data)),
                    }
            siblings.append(entry)
        info = self._summary(repo, commit)
        info.update(
            {
                "sha": commit.sha,
                "siblings": siblings,
                "spaces": [],
                "usedStorage": sum(len(d) for d in commit.files.values()),
                "cardData": {"license": "apache-2.0"},
            }
        )
        if repo.config is not None:
            info["config"] = repo.config
        return info

    def _summary(self, repo: _Repo, commit: _Commit) -> dict[str, Any]:
        tags = ["transformers", "safetensors"] + ([repo.pipeline_tag] if repo.pipeline_tag else [])
        return {
            "_id": hashlib.md5(repo.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "private": False,
            "disabled": False,
            "gated": "auto" if repo.gated else False,
            "downloads": repo.downloads,
            "likes": repo.likes,
            "trendingScore": repo.likes,
            "library_name": "transformers",
            "tags": tags,
            "pipeline_tag": repo.pipeline_tag,
            "createdAt": _iso(repo.created),
            "lastModified": _iso(commit.date),
        }

    def _list_models(self, query: dict[str, str], query_all: dict[str, list[str]]) -> list[dict[str, Any]]:
        search = query.get("search", "").lower()
        with self.hub._lock:
            repos = [r for r in self.hub._repos.values() if search in r.repo_id.lower()]
            rows = [(r, r.commits[r.refs["main"]] if "main" in r.refs else None) for r in repos]
        sort = query.get("sort")
        keys = {
            "downloads": lambda rc: rc[0].downloads,
            "likes": lambda rc: rc[0].likes,
            "trendingScore": lambda rc: rc[0].likes,
            "lastModified": lambda rc: rc[1].date if rc[1] else _EPOCH,
            "createdAt": lambda rc: rc[0].created,
        }
        if sort is not None:
            if sort not in keys:
                raise _HubError(400, None, f"invalid sort {sort}")
            rows.sort(key=keys[sort], reverse=True)  # the hub sorts descending by default
        limit = int(query.get("limit", "1000"))
        expand = query_all.get("expand") or query_all.get("expand[]") or []
        out: list[dict[str, Any]] = []
        for repo, commit in rows[:limit]:
            if commit is None:
                continue
            full = self._summary(repo, commit)
            full["sha"] = commit.sha
            full["siblings"] = [{"rfilename": p} for p in sorted(commit.files)]
            if repo.config is not None:
                full["config"] = repo.config
            if expand:
                item = {"_id": full["_id"], "id": full["id"]}
                item.update({k: full[k] for k in expand if k in full})
            else:
                keep = ["_id", "id", "modelId", "likes", "trendingScore", "private", "downloads", "tags"]
                keep += ["pipeline_tag", "library_name", "createdAt"]
                if _truthy(query.get("full")):
                    keep += ["author", "gated", "disabled", "lastModified", "sha", "siblings"]
                if _truthy(query.get("config")):
                    keep += ["config"]
                item = {k: full[k] for k in keep if k in full}
            out.append(item)
        return out

    def _tree(self, commit: _Commit, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        if prefix and not any(p.startswith(base) for p in commit.files):
            raise _HubError(404, "EntryNotFound", f"{prefix} does not exist")
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            parts = rest.split("/")
            # Folders on the way down, as the hub lists them.
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = base + "/".join(parts[:depth])
                oid = hashlib.sha1(folder.encode(), usedforsecurity=False).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if len(parts) > 1 and not recursive:
                continue
            data = commit.files[path]
            lfs = is_lfs(path, data)
            entry: dict[str, Any] = {
                "type": "file",
                "oid": git_blob_sha1(lfs_pointer(data) if lfs else data),
                "size": len(data),
                "path": path,
            }
            if lfs:
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": len(lfs_pointer(data)),
                }
            entries[path] = entry
        return list(entries.values())

    # ----------------------------------------------------------------------------------------- files

    def _resolve_file(self, method: str, repo_id: str, rev: str, path: str) -> None:
        repo, commit = self._repo_and_commit(repo_id, rev)
        if repo.gated:
            auth = self.headers.get("Authorization")
            if auth is None:
                raise _HubError(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in.",
                )
            if repo.token is None or auth != f"Bearer {repo.token}":
                raise _HubError(
                    403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized list."
                )
        if path not in commit.files:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {rev}")
        data = commit.files[path]
        common = {"X-Repo-Commit": commit.sha}
        if is_lfs(path, data):
            digest = hashlib.sha256(data).hexdigest()
            # Like the hub: the real bytes live on a CDN; the metadata is on the redirect itself.
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn_url}/cdn-lfs/{digest}?repo={repo_id}")
            self.send_header("X-Repo-Commit", commit.sha)
            self.send_header("X-Linked-Etag", f'"{digest}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{git_blob_sha1(lfs_pointer(data))}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        served = self.hub.tampered.get((repo_id, path), data)
        self._send_file(method, served, etag=f'"{git_blob_sha1(data)}"', extra=common)

    def _send_file(self, method: str, data: bytes, *, etag: str, extra: dict[str, str]) -> None:
        total = len(data)
        start, end, status = 0, total - 1, 200
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and self.hub.honour_range and (if_range is None or if_range == etag):
            parsed = _parse_range(range_header, total)
            if parsed is None:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = 206
        body = data[start : end + 1]
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if method == "HEAD":
            return
        drop = self.hub._take_drop()
        limit = len(body) if drop is None else min(drop, len(body))
        self._write_body(body[:limit])
        if drop is not None and limit < len(body):
            # Cut the connection mid-body: the client sees fewer bytes than Content-Length announced.
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _write_body(self, body: bytes) -> None:
        rate = self.hub.throttle_bytes_per_s
        if not rate:
            self.wfile.write(body)
            return
        piece = max(1024, min(16384, rate // 20))
        for i in range(0, len(body), piece):
            self.wfile.write(body[i : i + piece])
            self.wfile.flush()
            time.sleep(piece / rate)

    # ------------------------------------------------------------------------------------------ replies

    def _send_json(self, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, method: str, e: _HubError) -> None:
        body = json.dumps({"error": e.message}).encode()
        self.send_response(e.status)
        if e.code:
            self.send_header("X-Error-Code", e.code)
        self.send_header("X-Error-Message", e.message)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)


def _server_url(server: ThreadingHTTPServer | None) -> str:
    if server is None:
        raise RuntimeError("stub not started")
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def _parse_range(value: str, total: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range, clipped; None when not satisfiable."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", value.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    if not match.group(1):
        n = int(match.group(2))
        return (max(total - n, 0), total - 1) if n > 0 and total > 0 else None
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else total - 1
    if start >= total or end < start:
        return None
    return start, min(end, total - 1)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def kill_when(child: subprocess.Popen[bytes], ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    """SIGKILL `child` as soon as `ready()` holds (say, once it has written part of a file): a crash mid-pull.

    Fails the test if the child exits first or `ready()` never holds; never leaves the child running.
    """
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert child.poll() is None, f"the child exited ({child.returncode}) before {what}"
            assert time.monotonic() < deadline, f"the child never got to {what}"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
