"""A deployment's state machine, driven through the cluster's real flows on scripted engines: every entry of
`TRANSITIONS` taken, an illegal change refused, and a declared deployment that fails for good said loudly (an
error log with what to do, `/ready` naming it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_support import cluster, until
from litestar import Litestar
from litestar.testing import AsyncTestClient

from bitinglip.cluster import Cluster, ClusterPlugin, Deployment, Instances
from bitinglip.cluster import deployment as deployment_module
from bitinglip.cluster.deployment import TRANSITIONS, IllegalTransition
from bitinglip.core import Database, DbSettings, DeploymentSettings, Unavailable
from doubles import ScriptedFactory

Start = Callable[..., Awaitable[Cluster]]
Move = tuple[str, str, str]  # deployment, from, to


@pytest.fixture
async def start(tmp_path: Path, factory: ScriptedFactory) -> AsyncIterator[Start]:
    started: list[Cluster] = []

    async def build(**kw: Any) -> Cluster:
        c = cluster(tmp_path, factory, **kw)
        await c.start()
        started.append(c)
        return c

    yield build
    for c in started:
        await c.stop()


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> list[Move]:
    """Every state change a deployment made, as it made it."""
    seen: list[Move] = []
    to = Deployment.to

    def recording(self: Deployment, state: Any, reason: str | None = None) -> None:
        before = self.state
        to(self, state, reason)
        seen.append((self.name, before, state))

    monkeypatch.setattr(Deployment, "to", recording)
    return seen


A = DeploymentSettings(model="a")


def state_of(c: Cluster, name: str) -> str | None:
    d = c.deployments.get(name)
    return d.state if d is not None else None


async def ready_a(start: Start, factory: ScriptedFactory) -> Cluster:
    c = await start(deployments=[A])
    await until(lambda: c.ready)
    return c


async def failed_a(start: Start, factory: ScriptedFactory) -> Cluster:
    c = await start(deployments=[DeploymentSettings(model="nope", name="a")])
    await until(lambda: state_of(c, "a") == "failed")
    return c


async def starting_a(start: Start, factory: ScriptedFactory) -> Cluster:
    factory.engine_fields["start_s"] = 0.5
    c = await start(deployments=[A])
    await until(lambda: (c.deployments["a"].reason or "").startswith("starting the engine"))
    return c


async def sleeping_a(start: Start, factory: ScriptedFactory) -> Cluster:
    factory.engine_fields["can_sleep"] = True
    c = await start()
    (await c.acquire("a", keep_alive=0.05)).release()
    await until(lambda: state_of(c, "a") == "sleeping")
    return c


async def stopped_a(start: Start, factory: ScriptedFactory) -> Cluster:
    c = await start()
    (await c.acquire("a", keep_alive=0.05)).release()
    await until(lambda: state_of(c, "a") == "stopped")
    return c


async def removed(c: Cluster, name: str = "a") -> Cluster:
    c.undeploy(name)
    await until(lambda: name not in c.deployments)
    return c


async def acquired(c: Cluster) -> Cluster:
    (await c.acquire("a")).release()
    return c


async def server_stopped(c: Cluster) -> Cluster:
    await c.stop()
    return c


async def engine_died(c: Cluster, factory: ScriptedFactory) -> Cluster:
    factory.made[0].died = True
    await until(lambda: len(factory.made) == 2 and state_of(c, "a") == "ready")
    return c


async def evicted(c: Cluster) -> Cluster:
    b, cc = await c.acquire("b"), await c.acquire("c")  # the budget holds two engines: the sleeping a goes
    b.release()
    cc.release()
    return c


# How each entry of the table is reached in normal use.
FLOWS: dict[tuple[str, str], Callable[[Start, ScriptedFactory], Awaitable[Cluster]]] = {
    ("loading", "ready"): ready_a,
    ("loading", "failed"): failed_a,
    ("loading", "stopped"): lambda s, f: _then(starting_a(s, f), server_stopped),  # the server stopped mid-load
    ("loading", "draining"): lambda s, f: _then(starting_a(s, f), removed),
    ("ready", "loading"): lambda s, f: _then(ready_a(s, f), lambda c: engine_died(c, f)),
    ("ready", "sleeping"): sleeping_a,
    ("ready", "stopped"): stopped_a,
    ("ready", "draining"): lambda s, f: _then(ready_a(s, f), removed),
    ("sleeping", "loading"): lambda s, f: _then(sleeping_a(s, f), acquired),
    ("sleeping", "stopped"): lambda s, f: _then(sleeping_a(s, f), evicted),
    ("sleeping", "draining"): lambda s, f: _then(sleeping_a(s, f), removed),
    ("stopped", "loading"): lambda s, f: _then(stopped_a(s, f), acquired),
    ("stopped", "draining"): lambda s, f: _then(stopped_a(s, f), removed),
    ("draining", "stopped"): lambda s, f: _then(ready_a(s, f), removed),
    ("failed", "draining"): lambda s, f: _then(failed_a(s, f), removed),
}


async def _then(first: Awaitable[Cluster], then: Callable[[Cluster], Awaitable[Cluster]]) -> Cluster:
    return await then(await first)


def test_every_entry_of_the_table_has_a_flow() -> None:
    assert set(FLOWS) == {(a, b) for a, targets in TRANSITIONS.items() for b in targets}


@pytest.mark.parametrize("move", sorted(FLOWS), ids=lambda m: f"{m[0]}-{m[1]}")
async def test_each_legal_transition_is_taken_by_a_normal_flow(
    move: tuple[str, str], start: Start, factory: ScriptedFactory, moves: list[Move]
) -> None:
    await FLOWS[move](start, factory)
    assert ("a", *move) in moves


async def test_an_illegal_transition_raises_naming_both_states_and_changes_nothing(
    start: Start, factory: ScriptedFactory
) -> None:
    c = await failed_a(start, factory)
    d = c.deployments["a"]
    with pytest.raises(IllegalTransition, match="deployment 'a': no transition from failed to ready"):
        d.to("ready")
    with pytest.raises(IllegalTransition, match="no transition from failed to loading"):
        d.progress("starting the engine")
    assert d.state == "failed"
    with pytest.raises(Unavailable) as refused:
        await c.acquire("a")
    assert refused.value.code == "model_failed"


async def test_a_restart_that_ends_while_the_deployment_drains_does_not_bring_it_back(
    start: Start, factory: ScriptedFactory, moves: list[Move]
) -> None:
    c = await start(deployments=[A], restart_backoff_s=0.2)
    await until(lambda: c.ready)
    factory.made[0].died = True
    await until(lambda: c.deployments["a"].restarting)
    await removed(c)
    await asyncio.sleep(0.4)  # past the restart's backoff
    assert "a" not in c.deployments and len(factory.made) == 1  # no engine started for a removed deployment
    assert [m[1:] for m in moves] == [
        ("loading", "ready"),
        ("ready", "loading"),
        ("loading", "draining"),
        ("draining", "stopped"),
    ]


class Log:
    """Stands in for a module's structlog logger: records (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        return lambda event, **fields: self.events.append((level, event, fields))


@pytest.mark.parametrize(
    ("declared", "name", "hint"),
    [
        (
            {"model": "a", "embedding_model": "tiny-embed"},
            "tiny-embed",
            "model `tiny-embed` is not in the registry: run `bitinglip models create-tiny --embedding` "
            'or set `cluster.embedding_model = ""`',
        ),
        (
            {"deployments": [A, DeploymentSettings(model="org/missing")]},
            "org/missing",
            "run `bitinglip models pull org/missing` or remove it from `cluster.deployments[1]`",
        ),
    ],
)
async def test_a_declared_deployment_whose_model_is_missing_fails_loudly_and_ready_names_it(
    declared: dict[str, Any], name: str, hint: str, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log()
    monkeypatch.setattr(deployment_module, "log", log)
    c = await start(**declared)
    await until(lambda: state_of(c, name) == "failed" and state_of(c, "a") == "ready")
    (failure,) = [(level, fields) for level, event, fields in log.events if event == "deployment.failed"]
    level, fields = failure
    assert level == "error" and fields["deployment"] == name and hint in fields["hint"]
    assert "/ready answers 503 until it is removed (`bitinglip undeploy" in fields["hint"]

    async with AsyncTestClient(Litestar(plugins=[ClusterPlugin(c, unstarted_instances(c))])) as client:
        answer = await client.get("/ready")
        body = answer.json()
        # Failed for good: 503 with the reason and the hint, and no Retry-After (waiting will not change it).
        assert answer.status_code == 503 and "retry-after" not in answer.headers
        assert body["ready"] is False and body["failed"] == [name]
        assert body["reason"].startswith(f"deployment {name} failed: ")
        (entry,) = [d for d in body["deployments"] if d["name"] == name]
        assert entry["state"] == "failed" and hint in entry["hint"]
        await removed(c, name)  # the operator accepts the loss: the rest of the server is ready
        answer = await client.get("/ready")
        assert answer.status_code == 200 and answer.json()["reason"] is None


async def test_ready_says_what_it_waits_for_and_to_retry_while_declared_deployments_load(
    start: Start, factory: ScriptedFactory
) -> None:
    c = await starting_a(start, factory)
    async with AsyncTestClient(Litestar(plugins=[ClusterPlugin(c, unstarted_instances(c))])) as client:
        answer = await client.get("/ready")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        body = answer.json()
        assert body["failed"] == [] and body["reason"] == "waiting for a (loading: starting the engine)"
        await until(lambda: c.ready)
        answer = await client.get("/ready")
        assert answer.status_code == 200 and answer.json()["ready"] is True


def unstarted_instances(c: Cluster) -> Instances:
    """What the plugin wants beside the cluster; `/ready` never reads it (nothing here starts it)."""
    return Instances(Database(DbSettings(url="sqlite+aiosqlite://")), "http://127.0.0.1:8000", list, heartbeat_s=5)
