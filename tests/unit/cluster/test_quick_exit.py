"""Engine processes told to stop exit without Python's teardown (cluster/vllm/quick_exit.py): run in real child
processes, as vLLM starts its engine core and workers, against vLLM's real shared-memory ring."""

from __future__ import annotations

import atexit
import multiprocessing
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from bitinglip.cluster.vllm import engine_env, quick_exit
from bitinglip.core import ClusterSettings


def _engine_process(marker: str, fail: bool, names: multiprocessing.SimpleQueue[tuple[bool, str]]) -> None:
    """What an engine process does with its ring at the end: shut it as asked (`fail` False), or while an error
    is on its way out. The marker is written by an exit handler registered before the plugin's, as the libraries'
    are: it runs only if the ordinary teardown does."""
    atexit.register(lambda: Path(marker).write_text("teardown ran"))
    assert quick_exit.register()
    _use_a_ring(fail, names)


def _use_a_ring(fail: bool, names: multiprocessing.SimpleQueue[tuple[bool, str]]) -> None:
    """Make a vLLM ring, name it, and shut it as asked (`fail` False) or while an error is on its way out."""
    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

    ring = MessageQueue(n_reader=1, n_local_reader=1, max_chunk_bytes=1 << 16, max_chunks=4)
    names.put((fail, ring.buffer.shared_memory.name))
    try:
        if fail:
            raise RuntimeError("the engine process failed")
    finally:
        ring.shutdown()


@pytest.mark.timeout(120)
def test_a_stop_asked_for_skips_the_teardown_and_an_error_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(quick_exit.EXIT_ENV, "1")  # the children inherit it, as BitingLip's engines do
    spawn = multiprocessing.get_context("spawn")
    names: multiprocessing.SimpleQueue[tuple[bool, str]] = spawn.SimpleQueue()
    runs = {
        fail: (
            tmp_path / f"marker-{fail}",
            spawn.Process(target=_engine_process, args=(str(tmp_path / f"marker-{fail}"), fail, names)),
        )
        for fail in (False, True)
    }
    for _, proc in runs.values():
        proc.start()
    for _, proc in runs.values():
        proc.join(timeout=100)
    asked_marker, asked = runs[False]
    failed_marker, failed = runs[True]
    # Asked to stop: out at once with 0, the ordinary teardown (and its exit handlers) skipped.
    assert asked.exitcode == 0 and not asked_marker.exists()
    # An error on its way out: Python's own exit, its exit code and teardown kept.
    assert failed.exitcode == 1 and failed_marker.read_text() == "teardown ran"
    rings = dict([names.get(), names.get()])
    # The ring it made is gone from /dev/shm: vLLM unlinks it in a finalizer the skipped teardown would have run.
    assert not Path("/dev/shm", rings[False]).exists()
    Path("/dev/shm", rings[True]).unlink(missing_ok=True)  # left by the failed one, as vLLM leaves it


def _engine_core_forking(names: multiprocessing.SimpleQueue[tuple[bool, str]], codes: Any) -> None:
    """An engine core that forks its workers (fork_workers.py): registered before the fork, as vLLM loads it."""
    assert quick_exit.register()
    fork = multiprocessing.get_context("fork")
    workers = {fail: fork.Process(target=_use_a_ring, args=(fail, names)) for fail in (False, True)}
    for worker in workers.values():
        worker.start()
    for fail, worker in workers.items():
        worker.join(60)
        codes.put((fail, worker.exitcode))


@pytest.mark.timeout(120)
def test_a_forked_worker_asked_to_stop_unlinks_its_ring_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked process never reaches atexit (multiprocessing ends it with `os._exit`): the exit runs among
    multiprocessing's exit finalizers there, with the same outcome."""
    monkeypatch.setenv(quick_exit.EXIT_ENV, "1")
    spawn = multiprocessing.get_context("spawn")
    names: multiprocessing.SimpleQueue[tuple[bool, str]] = spawn.SimpleQueue()
    codes: Any = spawn.SimpleQueue()
    core = spawn.Process(target=_engine_core_forking, args=(names, codes))
    core.start()
    core.join(100)
    assert core.exitcode == 0
    assert dict([codes.get(), codes.get()]) == {False: 0, True: 1}
    rings = dict([names.get(), names.get()])
    assert not Path("/dev/shm", rings[False]).exists()
    assert Path("/dev/shm", rings[True]).exists()  # an error's exit leaves it to the server, as before
    Path("/dev/shm", rings[True]).unlink()


def test_it_is_a_vllm_general_plugin_of_this_package() -> None:
    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "bitinglip_quick_exit"]
    assert plugin.load() is quick_exit.register


def test_nothing_changes_outside_an_engine_child_or_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

    before = MessageQueue.shutdown
    monkeypatch.setenv(quick_exit.EXIT_ENV, "1")
    assert not quick_exit.register()  # this test process is no multiprocessing child: the server never is
    monkeypatch.delenv(quick_exit.EXIT_ENV)
    assert not quick_exit.register()
    assert MessageQueue.shutdown is before


def test_what_counts_as_a_stop_asked_for() -> None:
    assert quick_exit.asked_to_stop()
    for asked, exc in ((True, SystemExit()), (True, EOFError()), (False, SystemExit(1)), (False, RuntimeError())):
        try:
            raise exc
        except BaseException:
            assert quick_exit.asked_to_stop() is asked, exc


def test_bitinglips_engines_get_the_variable() -> None:
    assert engine_env(ClusterSettings(), cpu=True)[quick_exit.EXIT_ENV] == "1"
    assert engine_env(ClusterSettings(), cpu=False)[quick_exit.EXIT_ENV] == "1"
    assert os.environ.get(quick_exit.EXIT_ENV) is None  # set for the engine processes alone
