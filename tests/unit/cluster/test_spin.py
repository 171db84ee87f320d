"""How vLLM's engine processes wait for each other (cluster/vllm/spin.py), against vLLM's real shared-memory ring:
a reader between messages sleeps instead of spinning on a core, and still gets every message at once."""

from __future__ import annotations

import threading
import time
from importlib.metadata import entry_points

import pytest

from bitinglip.cluster.vllm import engine_env, spin
from bitinglip.core import ClusterSettings

GAP_S = 0.2  # between two messages: a reader waits this long within vLLM's 1 s busy-wait window
MESSAGES = 5


def reader_cpu_while_waiting(gap_s: float = GAP_S, messages: int = MESSAGES) -> tuple[float, list[float]]:
    """A writer sends ``messages`` messages ``gap_s`` apart through vLLM's ring; the reader, in a thread, takes them.
    Returns the reader thread's CPU seconds and how late it got each message (after the write)."""
    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue

    writer = MessageQueue(n_reader=1, n_local_reader=1, max_chunk_bytes=1 << 16, max_chunks=4)
    handle = writer.export_handle()
    result: dict[str, float] = {}
    late: list[float] = []

    def read() -> None:
        reader = MessageQueue.create_from_handle(handle, 0)
        reader.wait_until_ready()
        start = time.thread_time()
        for _ in range(messages):
            sent = reader.dequeue(timeout=10)
            late.append(time.monotonic() - sent)
        result["cpu_s"] = time.thread_time() - start

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    writer.wait_until_ready()
    for _ in range(messages):
        time.sleep(gap_s)
        writer.enqueue(time.monotonic())
    thread.join(timeout=20)
    assert not thread.is_alive(), "the reader never got every message"
    return result["cpu_s"], late


@pytest.fixture
def original_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    monkeypatch.setattr(SpinCondition, "wait", SpinCondition.wait)  # put back after the test


def test_it_is_a_vllm_general_plugin_of_this_package() -> None:
    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "bitinglip_engine_poll"]
    assert plugin.load() is spin.register


@pytest.mark.timeout(60)
def test_a_polling_reader_sleeps_between_messages_and_misses_none(
    original_wait: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    spinning_cpu_s, _ = reader_cpu_while_waiting()
    # vLLM's own reader spins through the gaps: most of their 1 s on the CPU.
    assert spinning_cpu_s > 0.5 * GAP_S * MESSAGES

    monkeypatch.setenv(spin.POLL_ENV, "0.0001")
    assert spin.register() and spin.register()  # vLLM may load a plugin twice in one process
    polling_cpu_s, late = reader_cpu_while_waiting()
    assert polling_cpu_s < 0.25 * spinning_cpu_s, (polling_cpu_s, spinning_cpu_s)
    # Every message is seen within a few polls (vLLM's lost notifications would cost 5 s each).
    assert len(late) == MESSAGES and max(late) < 0.05, late


def test_short_waits_spin_and_long_ones_sleep() -> None:
    assert spin.spin_budget(0.0) == spin.SPIN_AT_LEAST_S  # the message was there: the next wait spins a little
    assert spin.spin_budget(0.003) == pytest.approx(1.5 * 0.003 + spin.SPIN_AT_LEAST_S)  # one stream's step
    assert spin.spin_budget(0.030) == 0.0  # a loaded engine's step: sleep between looks from the start


@pytest.mark.timeout(60)
def test_a_reader_of_short_waits_still_spins(original_wait: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(spin.POLL_ENV, "0.0001")
    assert spin.register()
    cpu_s, late = reader_cpu_while_waiting(gap_s=0.002, messages=200)
    # Waits of 2 ms are spun through, as vLLM does: the reader is on the CPU most of the time, and quick.
    assert cpu_s > 0.5 * 0.002 * 200, cpu_s
    assert sorted(late)[len(late) // 2] < 0.001, late


def test_nothing_changes_without_the_variable(original_wait: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

    monkeypatch.delenv(spin.POLL_ENV, raising=False)
    before = SpinCondition.wait
    assert not spin.register()
    assert SpinCondition.wait is before
    monkeypatch.setenv(spin.POLL_ENV, "soon")
    assert not spin.register() and SpinCondition.wait is before


def test_engines_poll_by_default_on_the_cpu_build_only() -> None:
    assert engine_env(ClusterSettings(), cpu=True).get(spin.POLL_ENV) == "0.000100"
    assert spin.POLL_ENV not in engine_env(ClusterSettings(), cpu=False)
    assert engine_env(ClusterSettings(engine_poll_us=250), cpu=False).get(spin.POLL_ENV) == "0.000250"
    assert spin.POLL_ENV not in engine_env(ClusterSettings(engine_poll_us=0), cpu=True)  # vLLM's own spin
