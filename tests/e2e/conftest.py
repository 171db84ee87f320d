"""The real server (`bitinglip serve` in a subprocess, real vLLM engine on the CPU, tiny model), once per session."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

import hubstub

BIN = Path(sys.executable).parent / "bitinglip"
SETTINGS_DIR = Path(__file__).resolve().parents[2] / "settings"
READY_TIMEOUT_S = 420
# The shared server is given this hub id: it pulls the tiny model from a hub stand-in, then serves it.
MODEL = "org/tiny-chat"
# Beside it, as `make run` does, the tiny embedding model (from a local directory: its name is the folder's).
EMBEDDING_MODEL = "tiny-embed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN), *args], env=self.env, capture_output=True, text=True, timeout=timeout)


def server_env(data: Path, model: Path | str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITINGLIP_")}
    env.update(
        BITINGLIP_ENV="test",
        BITINGLIP_HOME=str(data),
        BITINGLIP_SETTINGS_DIR=str(SETTINGS_DIR),
        BITINGLIP_DB__URL=f"sqlite+aiosqlite:///{data}/bitinglip.db",
        BITINGLIP_MODELS__DIR=str(data / "models"),
        BITINGLIP_SERVER__PORT=str(port),
        BITINGLIP_CLUSTER__MODEL=str(model),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_server(data: Path, model: Path | str, **extra_env: str) -> Server:
    return wait_ready(launch_server(data, model, **extra_env))


def launch_server(data: Path, model: Path | str, **extra_env: str) -> Server:
    """`bitinglip serve` started, not waited for: several start at once, then `wait_ready` each."""
    port = free_port()
    env = server_env(data, model, port) | extra_env
    log_path = data / "server.log"
    with log_path.open("wb") as log:
        # Its own process group, as a shell gives a job: a signal to the group reaches what the server started too.
        # Not its own session: Linux's autogroup schedules each session as one CPU group, and the tests (another
        # group) were kept off the CPU for 1.4 s right after a burst of requests, runnable but not run.
        proc = subprocess.Popen(
            [str(BIN), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data, process_group=0
        )
    return Server(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path, env=env)


def wait_ready(server: Server) -> Server:
    """Until the server's /ready answers 200; a server that exits or takes too long fails the test, stopped."""
    proc = server.proc
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before it was ready:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polled every 1 s, each start waited half a second more on average
    stop_server(server)
    pytest.fail(f"server not ready after {READY_TIMEOUT_S} s:\n{server.log()[-4000:]}")


def make_key(env: dict[str, str], *args: str) -> str:
    """A key made by the CLI in the home ``env`` names (before its server starts, or beside it)."""
    out = subprocess.run(
        [str(BIN), "keys", "create", "--json", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    key: str = json.loads(out.stdout)["key"]
    return key


def stop_server(server: Server, sig: int = signal.SIGTERM, *, group: bool = False) -> int:
    """Signal the server (or, like Ctrl-C in a terminal, its whole process group) and wait for it to exit."""
    if server.proc.poll() is None:
        if group:
            os.killpg(server.proc.pid, sig)
        else:
            server.proc.send_signal(sig)
        try:
            server.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `stops_shared_server` run after every other test, whatever their file is called."""
    items.sort(key=lambda item: item.get_closest_marker("stops_shared_server") is not None)


@dataclass
class Hub:
    stub: hubstub.HubStub
    sha: str


@pytest.fixture(scope="session")
def hub(tiny_model_dir: Path) -> Iterator[Hub]:
    with hubstub.HubStub() as stub:
        sha = stub.add_repo_from_dir(MODEL, tiny_model_dir)
        yield Hub(stub, sha)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, hub: Hub, tiny_embedding_dir: Path) -> Iterator[Server]:
    """One start for the session: serving a hub id makes the server pull it first (slowed to ~6 s so the
    progress shows in the log), then serve it; the embedding model is served beside it."""
    data = tmp_path_factory.mktemp("server")
    hub.stub.throttle_bytes_per_s = 500_000
    try:
        srv = start_server(
            data,
            MODEL,
            BITINGLIP_MODELS__HUB_ENDPOINT=hub.stub.url,
            BITINGLIP_CLUSTER__EMBEDDING_MODEL=str(tiny_embedding_dir),
        )
    finally:
        hub.stub.throttle_bytes_per_s = None
    yield srv
    stop_server(srv)


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return server.openai()
