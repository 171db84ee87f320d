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


async def test_rows_from_before_hosts_were_recorded_are_this_machines(
    make_service: MakeService, tmp_path: Path
) -> None:
    service = await make_service()
    await service.registry.save(ModelRecord(name="old", source="local", path=str(tmp_path), state="ready"))
    async with service.registry.db.engine.begin() as conn:
        await conn.execute(sa.update(models).values(host=None, used_by_pid=2**22 + 12345))
    await service.start(resume_pulls=False)  # a dead pid of this machine: its mark is cleared
    assert (await service.registry.require("old")).used_by_pid is None
