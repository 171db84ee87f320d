"""The commands that are HTTP clients, against the stand-in server of cli_support.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli_support import URL, StandIn

from bitinglip.cli import cluster


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    stand_in = StandIn()
    monkeypatch.setattr(cluster, "client_factory", stand_in.client)
    monkeypatch.setattr(cluster, "POLL_INTERVAL_S", 0.0)
    monkeypatch.setenv("BITINGLIP_URL", URL)
    yield stand_in
