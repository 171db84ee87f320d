"""Which requests go to another instance: only for a model this one lacks and another serves, one hop only,
taking turns among those that serve it."""

from __future__ import annotations

from typing import Any

from bitinglip.cluster import Instance, InstanceDeployment, serving_elsewhere
from bitinglip.gateway import Forwarder


class Live:
    """`Instances` after a heartbeat that read these rows."""

    id = "here:1:aa"

    def __init__(self, instances: list[Instance]) -> None:
        self.instances = instances
        self.reads = 0
        self.serving_urls = serving_elsewhere(instances)

    async def live(self) -> list[Instance]:
        self.reads += 1
        return self.instances


def instance(url: str, *deployments: tuple[str, str], adapters: tuple[str, ...] = (), this: bool = False) -> Instance:
    return Instance(
        id=url,
        url=url,
        host="h",
        pid=1,
        started_at=0.0,
        heartbeat_at=0.0,
        deployments=[InstanceDeployment(name, name, state, list(adapters)) for name, state in deployments],
        this=this,
    )


def scope(*headers: tuple[bytes, bytes]) -> Any:
    return {"headers": list(headers)}


def test_a_model_served_elsewhere_goes_there_taking_turns_and_never_twice() -> None:
    live = Live(
        [
            instance("http://here", ("local", "ready"), this=True),
            instance("http://b", ("big", "ready"), ("gone", "failed"), adapters=("big-sql",)),
            instance("http://c", ("big", "sleeping")),
        ]
    )
    forwarder = Forwarder(live, lambda model: model == "local")  # type: ignore[arg-type]  (a stand-in)
    assert forwarder.target("local", scope()) is None  # this instance's own
    assert forwarder.target("nobody", scope()) is None  # nobody's: answered here (load on demand or 404)
    assert forwarder.target("gone", scope()) is None  # a failed deployment takes nothing
    turns = [forwarder.target("big", scope()) for _ in range(4)]
    assert sorted(turns) == ["http://b", "http://b", "http://c", "http://c"]
    assert forwarder.target("big-sql", scope()) == "http://b"  # an adapter goes where its base is
    assert forwarder.target("big", scope((b"x-bitinglip-forwarded", b"http://b"))) is None  # one hop
    assert forwarder.target(None, scope()) is None
    assert live.reads == 0  # no table read on a request's path, however many requests
