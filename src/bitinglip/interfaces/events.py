"""`GET /api/events`: what the dashboard's live parts show, as server-sent events (admin keys only).

Polled, not pushed: every `POLL_S` the stream reads what is new in the request log and the cluster's timeline
(each a `Feed`, so the requests themselves pay one append and nothing for readers), and every `SNAPSHOT_S` the
devices and deployments. Each event's `data` is JSON:

- `cluster`: `{"devices": [...], "deployments": [...]}`, as `/api/cluster` answers;
- `timeline`: a list of deployment state changes (`TimelineEvent`), oldest first; the first is the backlog;
- `requests`: a list of access lines (`AccessLine`), oldest first; the first is the backlog.

`?once=true` ends the stream after its first round (the snapshot and both backlogs): a script's one look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from bitinglip.cluster import Cluster, DeploymentStatus, Device, TimelineEvent
from bitinglip.core import EVENT_STREAM
from bitinglip.interfaces.requests import AccessLine, RequestLog

POLL_S = 0.5
SNAPSHOT_S = 2.0


class ClusterSnapshot(msgspec.Struct):
    devices: list[Device]
    deployments: list[DeploymentStatus]


class LiveEvents(msgspec.Struct):
    """What the events carry, one field per event name: each event's `data` is that field's value."""

    cluster: ClusterSnapshot
    timeline: list[TimelineEvent]
    requests: list[AccessLine]


def _event(name: str, data: object) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=name, data=msgspec.json.encode(data).decode())


class EventsController(Controller):
    tags = ("dashboard",)

    @get(
        "/api/events",
        operation_id="followEvents",
        summary="Server-sent events for live views: `cluster` snapshots, the deployments' `timeline`, `requests`",
        opt={EVENT_STREAM: LiveEvents},
    )
    async def events(
        self, cluster: NamedDependency[Cluster], request_log: NamedDependency[RequestLog], once: FromQuery[bool] = False
    ) -> ServerSentEvent:
        async def stream() -> AsyncIterator[ServerSentEventMessage]:
            timeline_seen = requests_seen = 0
            next_snapshot = 0.0
            first = True  # the backlogs go out even when empty: the page knows it has all there is
            while True:
                if time.monotonic() >= next_snapshot:
                    devices = await asyncio.to_thread(cluster.probe_devices)  # NVML calls block
                    yield _event("cluster", ClusterSnapshot(devices=devices, deployments=cluster.status()))
                    next_snapshot = time.monotonic() + SNAPSHOT_S
                changes: list[TimelineEvent] = cluster.timeline.since(timeline_seen)
                if changes or first:
                    timeline_seen = cluster.timeline.seq
                    yield _event("timeline", changes)
                lines: list[AccessLine] = request_log.feed.since(requests_seen)
                if lines or first:
                    requests_seen = request_log.feed.seq
                    yield _event("requests", lines)
                if once:
                    return
                first = False
                await asyncio.sleep(POLL_S)

        return ServerSentEvent(stream())
