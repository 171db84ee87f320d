"""Fixtures shared by unit and end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _bitinglip_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Nothing a test does may touch the real home (~/.local/share/bitinglip) or depend on what is there."""
    home = tmp_path_factory.mktemp("home")
    before = os.environ.get("BITINGLIP_HOME")
    os.environ["BITINGLIP_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("BITINGLIP_HOME", None)
    else:
        os.environ["BITINGLIP_HOME"] = before


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight model, built once per test session (a few seconds)."""
    from bitinglip.models.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_embedding_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny embedding model (`create-tiny --embedding`), built once per test session."""
    from bitinglip.models.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny-embed", embedding=True)
