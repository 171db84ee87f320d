"""An engine's KV cache is what its model can use (sequences x context x bytes per token), the setting at most,
and its engines start with that size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cluster_support import cluster, settings

from bitinglip.cluster.vllm.args import GIB, fit_context, kv_cache_bytes, kv_cache_need
from doubles import ScriptedFactory

TINY = {  # the tiny model's attention: 2 layers, 2 KV heads of 64, bfloat16, a 2,048-token context
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_size": 256,
    "max_position_embeddings": 2048,
    "dtype": "bfloat16",
}
PER_TOKEN = 2 * 2 * 2 * 64 * 2  # K and V, layers, KV heads, head size, bytes


def model(tmp_path: Path, name: str = "a", **config: Any) -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINY, **config}))
    return folder


def test_the_need_is_sequences_times_context_times_bytes_per_token(tmp_path: Path) -> None:
    path = model(tmp_path)
    assert kv_cache_need(path, {}) == 256 * 2048 * PER_TOKEN  # 512 MiB
    assert kv_cache_need(path, {"max_num_seqs": 8, "max_model_len": 1024}) == 8 * 1024 * PER_TOKEN
    assert kv_cache_need(path, {"max_num_seqs": 8, "dtype": "float32"}) == 8 * 2048 * PER_TOKEN * 2
    assert kv_cache_need(path, {"max_num_seqs": 8, "kv_cache_dtype": "fp8"}) == 8 * 2048 * PER_TOKEN // 2
    without_kv_heads = {k: v for k, v in TINY.items() if k not in ("num_key_value_heads", "head_dim")}
    (path / "config.json").write_text(json.dumps(without_kv_heads))  # all heads carry K and V; 256 / 4 = 64 each
    assert kv_cache_need(path, {"max_num_seqs": 1}) == 2048 * 2 * 2 * 4 * 64 * 2


@pytest.mark.parametrize("odd", [{"kv_lora_rank": 512}, {"num_hidden_layers": None}, {"dtype": "int3"}])
def test_attention_it_does_not_count_leaves_the_setting(tmp_path: Path, odd: dict[str, Any]) -> None:
    assert kv_cache_need(model(tmp_path, **odd), {}) is None
    assert kv_cache_need(tmp_path / "nowhere", {}) is None
    assert kv_cache_bytes(settings(kv_cache_gib=2.0), {}, model(tmp_path, **odd)) == (2 * GIB, True)


def test_the_setting_caps_it_and_an_explicit_size_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    path = model(tmp_path)
    assert kv_cache_bytes(settings(kv_cache_gib=2.0), {}, path) == (512 * 1024**2, True)
    assert kv_cache_bytes(settings(kv_cache_gib=0.25), {}, path) == (GIB // 4, True)
    assert kv_cache_bytes(settings(), {"kv_cache_memory_bytes": 123}, path) == (123, False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    assert kv_cache_bytes(settings(), {}, path) == (3 * GIB, False)


async def test_a_deployment_starts_its_engine_with_the_sized_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    model(tmp_path, "a")
    factory = ScriptedFactory()
    c = cluster(tmp_path, factory, names=("a",), kv_cache_gib=2.0)
    await c.start()
    try:
        (await c.acquire("a")).release()
        assert factory.args["a"]["kv_cache_memory_bytes"] == 256 * 2048 * PER_TOKEN
        (status,) = c.status()
        assert status.memory is not None and status.memory.kv_cache_bytes == 256 * 2048 * PER_TOKEN
    finally:
        await c.stop()


def test_the_clusters_context_is_cut_to_a_shorter_models_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    path = model(tmp_path)  # 2,048 positions
    assert fit_context({"max_model_len": 131072}, {}, path) == {"max_model_len": 2048}
    assert fit_context({"max_model_len": 1024}, {}, path) == {"max_model_len": 1024}
    # The deployment's own setting, a model that scales its positions, or vLLM told to allow longer: as given.
    assert fit_context({"max_model_len": 131072}, {"max_model_len": 131072}, path) == {"max_model_len": 131072}
    scaled = model(tmp_path, "scaled", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    assert fit_context({"max_model_len": 8192}, {}, scaled) == {"max_model_len": 8192}
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    assert fit_context({"max_model_len": 131072}, {}, path) == {"max_model_len": 131072}


async def test_a_deployment_of_a_shorter_model_starts_at_its_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    model(tmp_path, "a")
    factory = ScriptedFactory()
    c = cluster(tmp_path, factory, names=("a",), engine={"max_model_len": 131072})
    await c.start()
    try:
        (await c.acquire("a")).release()
        assert factory.args["a"]["max_model_len"] == 2048
    finally:
        await c.stop()
