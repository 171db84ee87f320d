"""A real PostgreSQL server for the tests: its own cluster in a temporary directory, on a free local port,
started once per test session and stopped at its end. Each test gets a database of its own on it.

The binaries are the machine's (Debian's `postgresql` package: `make postgres` installs it). PostgreSQL refuses
to run as root, so as root the cluster belongs to the package's `postgres` user (`runuser`).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else the newest of Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One running cluster; `new_url()` creates an empty database on it and returns its SQLAlchemy URL."""

    def __init__(self) -> None:
        found = bin_dir()
        if found is None:
            raise RuntimeError("no PostgreSQL binaries (initdb): run `make postgres` (Debian's postgresql package)")
        self.bin = found
        self.root = Path(tempfile.mkdtemp(prefix="bitinglip-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
        self._names = itertools.count(1)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "bitinglip", "-A", "trust", "-E", "UTF8"])
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        self._run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start"]
        )
        self.admin_url = f"postgresql+asyncpg://bitinglip@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        subprocess.run([*self._as_user, *argv], check=True, capture_output=True, timeout=60)

    def new_url(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        argv = [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "bitinglip", name]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        return f"postgresql+asyncpg://bitinglip@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
