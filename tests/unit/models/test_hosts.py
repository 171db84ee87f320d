"""Instances on several machines share the registry, not the files: each row says which machine its files (and
its pull's and users' processes) are on, and another machine neither loads from a path it lacks nor takes over
a pull or a mark it cannot see."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa
from pull_support import MakeService

from bitinglip.core import Conflict
from bitinglip.models import ModelRecord
from bitinglip.models.pulls import pid_alive
from bitinglip.models.tables import models


async def test_a_model_on_another_machine_is_refused_with_where_it_is(
    make_service: MakeService, tmp_path: Path
) -> None:
    service = await make_service()
    here = tmp_path / "here"
    here.mkdir()
    await service.registry.save(ModelRecord(name="local", source="local", path=str(here), state="ready"))
    await service.registry.save(ModelRecord(name="far", source="hub", path="/nowhere/far", state="ready"))
    async with service.registry.db.engine.begin() as conn:  # pulled by the instance on gpu-2
        await conn.execute(models.update().where(models.c.name == "far").values(host="gpu-2", used_by_pid=1))
    assert (await service.registry.require("local")).host == socket.gethostname()
    assert (await service.resolve_to_load("local"))[1] == "local"
    with pytest.raises(Conflict, match="pulled on gpu-2") as refused:
        await service.resolve_to_load("far")
    assert refused.value.code == "model_on_another_machine"
    await service.start(resume_pulls=False)  # gpu-2's process 1 is not ours to judge: its mark stays
    far = await service.registry.require("far")
    assert far.used_by_pid == 1 and service.is_in_use(far)


def test_a_pid_on_another_machine_is_taken_for_alive() -> None:
    assert pid_alive(2**22 + 12345, "gpu-2")  # no such process here, but that machine's
    assert not pid_alive(2**22 + 12345, socket.gethostname())
    assert not pid_alive(os.getpid(), None)  # our own pid: left over from an earlier life of ours


async def test_the_same_model_on_two_machines_has_a_row_on_each(
    make_service: MakeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each machine pulls, serves and removes its own copy; every machine sees which have it."""
    service = await make_service()
    copies = {host: tmp_path / host for host in ("gpu-1", "gpu-2")}  # on those machines' disks, not this one's
    for host, path in copies.items():
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        await service.registry.save(ModelRecord(name="org/m", source="hub", path=str(path), state="ready"))
        await service.registry.update("org/m", used_by_pid=os.getpid())  # its own row only
    for host, path in copies.items():
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        record = await service.registry.require("org/m")
        assert (record.host, record.path, record.hosts) == (host, str(path), ["gpu-1", "gpu-2"])
        assert [(m.name, m.host) for m in await service.registry.list_models()] == [("org/m", host)]
    async with service.registry.db.engine.connect() as conn:
        rows = (await conn.execute(sa.select(models.c.host, models.c.used_by_pid).order_by(models.c.host))).all()
    assert rows == [("gpu-1", os.getpid()), ("gpu-2", os.getpid())]

    # A third machine has no copy: it is told where the model is, and cannot remove another machine's.
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-3")
    with pytest.raises(Conflict) as refused:
        await service.resolve_to_load("org/m")
    assert refused.value.code == "model_on_another_machine"
    with pytest.raises(Conflict, match="remove it there"):
        await service.remove("org/m", force=True)
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-2")
    await service.remove("org/m", force=True)  # gpu-2's copy only
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-1")
    kept = await service.registry.require("org/m")
    assert kept.host == "gpu-1" and kept.hosts == ["gpu-1"] and kept.path == str(copies["gpu-1"])
