"""Fixtures shared by unit and end-to-end tests."""

from __future__ import annotations

import asyncio
import gc
import inspect
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# pytest-timeout (pyproject.toml) dumps every thread's stack and exits. A hung event loop shows only `select`
# there, so a little before that this names the test and prints the stack of each unfinished asyncio task.
HANG_REPORT_AHEAD_S = 2.0
_hang_timer = pytest.StashKey[threading.Timer]()


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    timer = threading.Timer(max(settings.timeout - HANG_REPORT_AHEAD_S, 0.0), _report_hang, (item,))
    timer.daemon = True
    timer.start()
    item.stash[_hang_timer] = timer
    # None: pytest-timeout still arms its own timer


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    if (timer := item.stash.get(_hang_timer, None)) is not None:
        timer.cancel()


def _report_hang(item: pytest.Item) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture()
    terminal = item.config.get_terminal_writer()
    terminal.sep("+", f"Timeout: {item.nodeid}")
    alive = gc.get_objects()
    for task in [o for o in alive if isinstance(o, asyncio.Task) and not o.done()]:
        terminal.line(f"~~~ {task.get_name()}, awaiting:")
        terminal.line("\n".join(_awaiting(task.get_coro())))
    # An async fixture stuck in its teardown sits behind `__anext__()`, where a task's chain of awaits ends.
    for agen in [o for o in alive if inspect.isasyncgen(o) and o.ag_await is not None]:
        terminal.line(f"~~~ async generator {agen.__qualname__}, awaiting:")
        terminal.line("\n".join(_awaiting(agen)))
    terminal.flush()


def _awaiting(coro: Any) -> list[str]:
    """The frames of a coroutine (or async generator) and of what it awaits, outermost first."""
    lines = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or getattr(coro, "gi_yieldfrom", None)
    return lines


@pytest.fixture(scope="session", autouse=True)
def _bitinglip_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Nothing a test does may touch the real home (~/.local/share/bitinglip) or depend on what is there."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BITINGLIP_HOME", str(home))
        yield home


@pytest.fixture(scope="session", autouse=True)
def _vllm_sockets() -> Iterator[Path]:
    """vLLM's ZeroMQ socket files, made by the tests' own vLLM objects and processes (servers give their engines
    folders of their own): in a folder removed at the end, not left in the temp folder by killed processes."""
    folder = Path(tempfile.mkdtemp(prefix="bitinglip-test-ipc-"))  # short: a socket path has 107 bytes at most
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_RPC_BASE_PATH", str(folder))
        yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight model, built once per test session (a few seconds)."""
    from bitinglip.models.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny embedding model (`create-tiny --embedding`), built once per test session."""
    from bitinglip.models.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny-embed", embedding=True)


@pytest.fixture(scope="session")
def tiny_reasoning_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny reasoning model (`create-tiny --reasoning`, served as `tiny-think`), built once per test session."""
    from bitinglip.models.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny-think", reasoning=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A real PostgreSQL server (tests/postgres.py), one for the whole session; each test makes its own database."""
    from postgres import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind BitingLip runs on: the stores' suites run on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/bitinglip.db"
    url: str = request.getfixturevalue("postgres_server").new_url()
    return url
