"""vLLM's own objects for the tiny model, built as an engine builds them, without starting an engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitinglip.cluster import health
from doubles import ScriptedFactory


@pytest.fixture(scope="session")
def vllm_config(tiny_model_dir: Path) -> Any:
    """The `VllmConfig` an engine of the tiny model gets (a few seconds: vLLM reads the model's config)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    saved = dict(os.environ)  # vLLM sets variables for the engine processes it would start; none start here
    try:
        args = AsyncEngineArgs(model=str(tiny_model_dir), enforce_eager=True, kv_cache_memory_bytes=64 * 1024**2)
        return args.create_engine_config()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def vllm_renderer(vllm_config: Any) -> Iterator[Any]:
    """The engine's renderer (prompts in, its tokenizer, the EOS id), fresh for each test: hooks change it."""
    from vllm.renderers.registry import renderer_from_config

    renderer = renderer_from_config(vllm_config)
    yield renderer
    renderer.shutdown()


@pytest.fixture(scope="session")
def vllm_tokenizer(vllm_config: Any) -> Any:
    """The tokenizer vLLM gives the engine's output processor (its pooled, cached wrapper of the model's)."""
    from vllm.tokenizers.registry import cached_tokenizer_from_config

    return cached_tokenizer_from_config(vllm_config.model_config)


@pytest.fixture(autouse=True)
def fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The health watch ticks every 20 ms in these tests, not every second."""
    monkeypatch.setattr(health, "WATCH_INTERVAL_S", 0.02)


@pytest.fixture
def factory() -> ScriptedFactory:
    return ScriptedFactory()
