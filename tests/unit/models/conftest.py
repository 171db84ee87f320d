"""Model service fixtures: a real SQLite file in tmp_path, the real hub client against tests/hubstub.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pull_support import ARCHS, TINY, MakeService

import hubstub
from bitinglip.core.db import Database
from bitinglip.core.settings import DbSettings
from bitinglip.models import HubClient, ModelRegistry, ModelService


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # The library would otherwise send a token from the environment to the stand-in.
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def stub() -> Iterator[hubstub.HubStub]:
    with hubstub.HubStub() as s:
        yield s


@pytest.fixture
def tiny_files(tiny_model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tiny_model_dir.iterdir()) if p.is_file()}


@pytest.fixture
def tiny_sha(stub: hubstub.HubStub, tiny_model_dir: Path) -> str:
    """The tiny model published as org/tiny-chat; returns its commit sha."""
    return stub.add_repo_from_dir(TINY, tiny_model_dir)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
async def make_service(
    tmp_path: Path, models_dir: Path, stub: hubstub.HubStub, db_url: str
) -> AsyncIterator[MakeService]:
    """Build a ModelService on the test's database; call it again for a "restarted" process on the same files."""
    made: list[ModelService] = []

    async def make(**hub_options: object) -> ModelService:
        db = Database(DbSettings(url=db_url))
        await db.start()
        options = {"endpoint": stub.url, "timeout": 10.0, "max_retries": 2, "backoff_s": 0.01} | hub_options
        service = ModelService(ModelRegistry(db, models_dir), HubClient(**options), lambda: ARCHS)  # type: ignore[arg-type]
        made.append(service)
        return service

    yield make
    for service in made:
        await service.pulls.stop()
        await service.registry.db.stop()


@pytest.fixture
async def service(make_service: MakeService) -> ModelService:
    return await make_service()
