"""The cluster with scripted engines: states, one start at a time, routing, limits, on-demand loads, idle
put-away (sleep and stop), eviction of the least recently used, restarts with backoff, draining."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_support import GIB, cluster, cpu, settings, until

from bitinglip.cluster import Cluster, Device, health
from bitinglip.cluster.deployment import TimelineEvent
from bitinglip.core import DeploymentSettings, NotFound, Unavailable
from bitinglip.core.errors import Conflict
from bitinglip.core.feed import Feed
from doubles import FakeCatalog, ScriptedFactory


@pytest.fixture
def make(tmp_path: Path, factory: ScriptedFactory) -> Callable[..., Cluster]:
    def build(names: tuple[str, ...] = ("a", "b", "c"), free_gib: float = 60, **kw: Any) -> Cluster:
        return cluster(tmp_path, factory, names, free_gib, **kw)

    return build


@pytest.fixture
async def running(make: Callable[..., Cluster]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Cluster] = []

    async def start(**kw: Any) -> Cluster:
        c = make(**kw)
        await c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        await c.stop()


async def test_declared_deployments_start_one_at_a_time_and_make_ready(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    factory.engine_fields["start_s"] = 0.1
    c = await running(deployments=[DeploymentSettings(model="a"), DeploymentSettings(model="b", name="bee")])
    assert not c.ready and [d.state for d in c.deployments.values()] == ["loading", "loading"]
    await until(lambda: c.ready)
    assert [e.served_name for e in factory.made] == ["a", "bee"]
    # b's engine was made only after a's start had finished: never two starts at once
    assert factory.made[0].started and factory.made[1].started
    status = {s.name: s for s in c.status()}
    assert status["bee"].model == "b" and status["bee"].state == "ready" and status["bee"].keep_alive_s is None
    assert status["a"].device_kind == "cpu" and status["a"].memory is not None
    assert status["a"].memory.estimate_bytes == 2 * GIB


async def test_requests_go_to_the_replica_with_fewest_in_flight_and_limits_refuse_fast(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    c = await running(
        deployments=[DeploymentSettings(model="a", replicas=2, max_concurrency=1, max_queue=1)],
        cpu_memory_budget_gib=10,
    )
    await until(lambda: c.ready)
    leases = [await c.acquire("a") for _ in range(4)]
    assert [lease.engine for lease in leases].count(factory.made[0]) == 2  # spread 2 and 2
    with pytest.raises(Unavailable) as busy:
        await c.acquire("a")
    assert busy.value.code == "overloaded" and busy.value.retry_after == 1
    leases[0].release()
    leases[0].release()  # once only
    assert c.deployments["a"].in_flight == 3
    (await c.acquire("a")).release()


async def test_prompt_tokens_waiting_are_bounded_and_a_started_request_frees_its_share(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    spec = DeploymentSettings(model="a", max_concurrency=1, max_queue=5, max_queue_tokens=100)
    c = await running(deployments=[spec])
    await until(lambda: c.ready)
    running_one = await c.acquire("a")
    running_one.queue_prompt(500)  # into a free slot: its prompt does not queue
    first, second = await c.acquire("a"), await c.acquire("a")
    first.queue_prompt(60)
    second.queue_prompt(50)
    with pytest.raises(Unavailable) as busy:
        await c.acquire("a")  # 110 waiting: refused on the count alone, before any prompt is known
    assert busy.value.code == "overloaded" and "prompt tokens" in busy.value.message
    status = c.status()[0]
    assert status.stats.queued_tokens == 110 and status.limits.max_queue_tokens == 100
    first.started()  # its first engine step: no longer waiting
    third = await c.acquire("a")
    second.release()  # released before it started: its share goes too
    for lease in (third, first, running_one):
        lease.release()
    assert c.status()[0].stats.queued_tokens == 0
    # Left unset, the bound comes from the engine: max_model_len x max(2, max_num_seqs / 8).
    await c.deploy(DeploymentSettings(model="b"))
    await until(lambda: c.deployments["b"].state == "ready")
    engine = factory.of("b")[0]
    assert c.deployments["b"].limits()[2] == engine.max_model_len * max(2, engine.max_num_seqs // 8)


async def test_unknown_model_is_not_found_and_on_demand_loads_a_registered_one(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    factory.engine_fields["start_s"] = 0.3
    c = await running()
    with pytest.raises(NotFound):
        await c.acquire("nope")
    assert {m.name: m.state for m in await c.served_models()} == {"a": "on_demand", "b": "on_demand", "c": "on_demand"}
    waiting = asyncio.create_task(c.acquire("b"))
    await until(lambda: "b" in c.deployments)
    await asyncio.sleep(0.1)
    (status,) = c.status()
    assert status.state == "loading" and status.loading_for_s is not None and status.loading_for_s >= 0.1
    lease = await waiting
    assert lease.engine is factory.made[0] and c.deployments["b"].keep_alive_s == 300
    lease.release()


async def test_a_load_longer_than_the_bound_answers_503_with_retry_after(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    factory.engine_fields["start_s"] = 1.0
    c = await running(load_timeout_s=0.2)
    with pytest.raises(Unavailable) as slow:
        await c.acquire("a")
    assert slow.value.code == "model_loading" and slow.value.retry_after
    await until(lambda: c.deployments["a"].state == "ready")  # the load went on without the request


async def test_on_demand_off_refuses_what_is_not_deployed(running: Callable[..., Any]) -> None:
    c = await running(load_on_demand=False)
    with pytest.raises(NotFound):
        await c.acquire("a")
    assert await c.served_models() == []


async def test_idle_put_away_sleeps_where_it_can_and_a_request_wakes_it(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    factory.engine_fields["can_sleep"] = True
    c = await running()
    (await c.acquire("a", keep_alive="0.1s")).release()
    await until(lambda: c.deployments["a"].state == "sleeping")
    engine = factory.made[0]
    assert engine.calls == ["start", "sleep"]
    lease = await c.acquire("a")
    assert lease.engine is engine and engine.calls == ["start", "sleep", "wake_up"] and len(factory.made) == 1
    lease.release()


async def test_idle_put_away_stops_where_sleep_is_not_available_and_a_request_cold_starts(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    c = await running()
    (await c.acquire("a", keep_alive=0.1)).release()
    await until(lambda: c.deployments["a"].state == "stopped")
    assert factory.made[0].calls == ["start", "stop"] and c.deployments["a"].reason.startswith("idle")
    lease = await c.acquire("a")
    assert lease.engine is factory.made[1]
    lease.release()


async def test_a_deployment_in_use_is_not_put_away(running: Callable[..., Any]) -> None:
    c = await running()
    lease = await c.acquire("a", keep_alive=0.05)
    await asyncio.sleep(0.3)
    assert c.deployments["a"].state == "ready"
    lease.release()


async def test_room_is_made_by_evicting_the_least_recently_used_idle_deployment(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    c = await running()
    (await c.acquire("a")).release()
    await asyncio.sleep(0.01)
    (await c.acquire("b")).release()
    (await c.acquire("a")).release()  # b is now the least recently used
    lease = await c.acquire("c")
    assert c.deployments["b"].state == "stopped" and c.deployments["b"].reason == "evicted to make room for c"
    assert c.deployments["a"].state == "ready" and c.deployments["c"].state == "ready"
    lease.release()


async def test_nothing_is_evicted_when_that_would_not_make_room_and_the_refusal_names_the_bytes(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    c = await running(deployments=[DeploymentSettings(model="a")])  # declared: pinned, never evicted
    await until(lambda: c.ready)
    held = await c.acquire("b")  # in flight: not evictable either
    with pytest.raises(Unavailable) as refused:
        await c.acquire("c")
    message = refused.value.message
    assert "not enough memory for deployment c" in message and "2147483648 bytes" in message
    assert "held by a 2.00 GiB, b 2.00 GiB" in message and "short by" in message
    assert c.deployments["a"].state == "ready" and c.deployments["b"].state == "ready"
    assert "c" not in c.deployments  # refused on demand: the next request tries again
    with pytest.raises(Conflict) as api_refusal:
        await c.deploy(DeploymentSettings(model="c", engine={"kv_cache_memory_bytes": 100 * GIB}))
    assert api_refusal.value.code == "insufficient_memory" and "c" not in c.deployments
    held.release()


async def test_a_deployment_is_called_ready_only_once_its_engine_is_recorded(
    make: Callable[..., Cluster], factory: ScriptedFactory
) -> None:
    """A server killed the moment a deployment is ready still has its engine named for the next server's reaper."""
    factory.engine_fields["pids"] = [os.getpid()]  # a live process stands in for the engine core
    c = make(deployments=[DeploymentSettings(model="a")])
    named_when_ready: list[list[int]] = []

    class Watched(Feed[TimelineEvent]):
        def push(self, item: TimelineEvent) -> None:
            if item.state == "ready":
                record = json.loads(c.records.file.read_text()) if c.records.file.exists() else {"engines": []}
                named_when_ready.append([engine["pid"] for engine in record["engines"]])
            super().push(item)

    c.timeline = Watched(16)
    await c.start()
    try:
        await until(lambda: c.ready)
        assert named_when_ready == [[os.getpid()]]
    finally:
        await c.stop()


async def test_a_dead_engine_is_restarted_with_backoff_and_requests_meanwhile_fail_fast(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    c = await running(deployments=[DeploymentSettings(model="a")], restart_backoff_s=0.2)
    await until(lambda: c.ready)
    factory.made[0].died = True
    await until(lambda: c.deployments["a"].state == "loading")
    began = time.monotonic()
    with pytest.raises(Unavailable) as down:
        await c.acquire("a")
    assert down.value.code == "model_restarting" and time.monotonic() - began < 0.1
    await until(lambda: c.deployments["a"].state == "ready")
    (status,) = c.status()
    assert status.replicas[0].restarts == 1 and len(factory.made) == 2 and factory.made[0].calls[-1] == "stop"


async def test_restarts_are_bounded_then_failed_with_the_reason(
    running: Callable[..., Any], factory: ScriptedFactory
) -> None:
    c = await running(deployments=[DeploymentSettings(model="a")], restart_attempts=2)
    await until(lambda: c.ready)
    factory.engine_fields["fail_start"] = "CUDA out of memory"
    factory.made[0].died = True
    await until(lambda: c.deployments["a"].state == "failed")
    d = c.deployments["a"]
    assert "engine core process died" in (d.reason or "") and "CUDA out of memory" in (d.reason or "")
    assert len(factory.made) == 3 and not c.ready
    with pytest.raises(Unavailable) as failed:
        await c.acquire("a")
    assert failed.value.code == "model_failed"


async def test_a_stalled_engine_is_restarted(running: Callable[..., Any], factory: ScriptedFactory) -> None:
    c = await running(deployments=[DeploymentSettings(model="a")], stall_timeout_s=0.1)
    await until(lambda: c.ready)
    stuck = factory.made[0]
    stuck.running.add("r1")
    stuck.stats.updated_at = stuck.stats.busy_since = time.monotonic() - 1
    await until(lambda: len(factory.made) == 2 and c.deployments["a"].state == "ready")
    assert "no engine step" in (c.status()[0].replicas[0].last_restart or "")


async def test_undeploy_drains_in_flight_requests_then_removes(running: Callable[..., Any]) -> None:
    c = await running()
    lease = await c.acquire("a")
    c.undeploy("a")
    assert c.deployments["a"].state == "draining"
    with pytest.raises(Unavailable):
        await c.acquire("a")
    await asyncio.sleep(0.2)
    assert "a" in c.deployments
    lease.release()
    await until(lambda: "a" not in c.deployments)


async def test_a_deploy_with_a_bad_engine_argument_or_name_taken_is_refused(running: Callable[..., Any]) -> None:
    c = await running()
    from bitinglip.core import SettingsError

    with pytest.raises(SettingsError):
        await c.deploy(DeploymentSettings(model="a", engine={"max_model_length": 5}))
    await c.deploy(DeploymentSettings(model="a"))
    with pytest.raises(Conflict):
        await c.deploy(DeploymentSettings(model="a"))


async def test_a_deploy_of_an_unknown_model_is_refused_at_once(running: Callable[..., Any]) -> None:
    c = await running()
    with pytest.raises(NotFound):
        await c.deploy(DeploymentSettings(model="nope", name="n"))
    assert "n" not in c.deployments


async def test_a_put_away_deployment_that_cannot_come_back_stays_put_away_and_retries_later(
    running: Callable[..., Any],
) -> None:
    c = await running()
    (await c.acquire("a", keep_alive=0.05)).release()
    await until(lambda: c.deployments["a"].state == "stopped")
    b, cc = await c.acquire("b"), await c.acquire("c")  # both in flight: nothing can be evicted for a
    with pytest.raises(Unavailable) as refused:
        await c.acquire("a")
    assert refused.value.code == "model_not_loaded" and "not enough memory" in refused.value.message
    assert c.deployments["a"].state == "stopped" and "could not be loaded again" in (c.deployments["a"].reason or "")
    cc.release()  # c is idle now, and evictable
    lease = await c.acquire("a")
    assert c.deployments["a"].state == "ready" and c.deployments["c"].state == "stopped"
    lease.release()
    b.release()


async def test_on_gpus_the_engine_sees_only_the_gpus_placement_chose(tmp_path: Path) -> None:
    def gpus() -> list[Device]:
        return [
            Device(
                kind="gpu",
                index=i,
                name="H100",
                memory_total_bytes=80 * GIB,
                memory_used_bytes=(80 - free) * GIB,
                memory_free_bytes=free * GIB,
            )
            for i, free in enumerate((10, 70, 40))
        ] + cpu()()

    seen: list[dict[str, str]] = []
    factory = ScriptedFactory()

    def recording(path: Path, name: str, args: dict[str, Any], env: dict[str, str]) -> Any:
        seen.append(env)
        return factory(path, name, args, env)

    c = Cluster(
        settings(cpu_memory_budget_gib=None),
        FakeCatalog(tmp_path, ["a", "b", "c"]),
        run_dir=tmp_path / "run",
        factory=recording,
        probe_devices=gpus,
        cpu_platform=False,
    )
    await c.start()
    try:
        (await c.acquire("a")).release()
        await c.deploy(DeploymentSettings(model="b", device_count=2))
        await until(lambda: c.deployments["b"].state == "ready")
        assert seen[0]["CUDA_VISIBLE_DEVICES"] == "1" and seen[0]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert seen[1]["CUDA_VISIBLE_DEVICES"] == "1,2"
        assert c.status()[1].devices == [1, 2] and c.status()[1].device_kind == "gpu"
        await c.deploy(DeploymentSettings(model="c", replicas=2, devices=[2, 0]))  # one GPU each, in that order
        await until(lambda: c.deployments["c"].state == "ready")
        assert [env["CUDA_VISIBLE_DEVICES"] for env in seen[2:]] == ["2", "0"]
        assert c.status()[2].memory is not None and c.status()[2].memory.estimate_bytes == 2 * 2 * GIB
    finally:
        await c.stop()


async def test_memory_is_measured_while_engines_are_idle_and_seldom_while_they_serve(
    running: Callable[..., Any], factory: ScriptedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A measurement of a CPU engine costs the API process ~40 ms of page-table walking: not while it serves.
    monkeypatch.setattr(health, "MEASURE_EVERY", 2)
    monkeypatch.setattr(health, "MEASURE_BUSY_EVERY", 1000)
    c = await running(deployments=[DeploymentSettings(model="a")])
    await until(lambda: c.ready)
    measured: list[int] = []

    async def measure() -> None:
        measured.append(c.health.ticks)

    monkeypatch.setattr(c.health, "measure", measure)
    await until(lambda: len(measured) >= 2)
    assert measured[1] - measured[0] == 2  # idle: every MEASURE_EVERY ticks
    factory.made[0].running.add("r1")  # serving now
    await asyncio.sleep(0.05)  # a round already under way may still measure
    count, ticks = len(measured), c.health.ticks
    await until(lambda: c.health.ticks >= ticks + 10)
    assert len(measured) == count
    factory.made[0].running.clear()
    await until(lambda: len(measured) > count)


async def test_an_engine_that_goes_during_a_measurement_is_skipped_not_an_error(
    make: Callable[..., Cluster], factory: ScriptedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 21: an undeploy while the watch measured raised AssertionError (the engine went across an await).
    c = make()  # not started: no watch loop, so this test's measurement is the only one
    await c.deploy(DeploymentSettings(model="a"))
    await c.deploy(DeploymentSettings(model="b"))
    await until(lambda: c.deployments["a"].state == "ready" and c.deployments["b"].state == "ready")
    (engine_a,), (engine_b,) = factory.of("a"), factory.of("b")
    engine_a.pids, engine_b.pids = [101], [202]
    entered, go_on = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def tree_memory(pids: list[int], gpu_use: dict[int, int] | None) -> int:
        seen.append(pids)
        if len(seen) == 1:  # the first engine's measurement: hold it until b is gone
            entered.set()
            go_on.wait(5)
        return 3 * GIB

    monkeypatch.setattr(health, "_tree_memory", tree_memory)
    measuring = asyncio.create_task(c.health.measure())
    await until(entered.is_set)
    c.undeploy("b")
    await until(lambda: "b" not in c.deployments)
    assert engine_b.calls[-1] == "stop"
    go_on.set()
    await measuring  # raised AssertionError before
    assert seen == [[101], [202]]  # b measured by the pids it had, its figure dropped
    a = c.deployments["a"]
    assert a.replicas[0].held_bytes == 3 * GIB
    assert a.estimate is not None and c.health.overhead_seen == 3 * GIB - a.estimate.kv_cache_bytes
    await c.stop()
