"""Engine arguments are checked against vLLM's own fields; the CPU gets sane defaults."""

from __future__ import annotations

import pytest

from bitinglip.cluster.vllm import check_engine_args, effective_engine_args
from bitinglip.core import SettingsError


def test_known_arguments_pass() -> None:
    check_engine_args(
        {
            "max_model_len": 512,
            "dtype": "bfloat16",
            "enforce_eager": True,
            "max_num_seqs": 8,
            "gpu_memory_utilization": 0.8,
            "tensor_parallel_size": 1,
        }
    )


def test_unknown_argument_is_named_with_a_hint() -> None:
    with pytest.raises(SettingsError) as err:
        check_engine_args({"max_model_length": 512})
    assert "cluster.engine.max_model_length" in err.value.message
    assert "max_model_len" in err.value.message


def test_model_is_reserved_for_cluster_model() -> None:
    with pytest.raises(SettingsError, match=r"cluster\.model"):
        check_engine_args({"model": "/x"})


def test_cpu_defaults_bound_the_kv_cache_and_keep_user_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = effective_engine_args({"max_model_len": 512}, cpu_kv_cache_gib=1.5)
    assert args["kv_cache_memory_bytes"] == int(1.5 * 1024**3)
    assert args["enforce_eager"] is True
    mine = effective_engine_args({"kv_cache_memory_bytes": 123, "enforce_eager": False}, cpu_kv_cache_gib=1.5)
    assert mine["kv_cache_memory_bytes"] == 123 and mine["enforce_eager"] is False


async def test_a_busy_engine_without_steps_is_reported_stalled_then_recovers() -> None:
    import time

    from bitinglip.cluster import Cluster
    from bitinglip.cluster.vllm import VllmEngine
    from bitinglip.core import ClusterSettings

    async def resolve(spec: str) -> tuple:
        raise AssertionError("not used")

    cluster = Cluster(ClusterSettings(stall_timeout_s=5), resolve)
    engine = VllmEngine(__import__("pathlib").Path("/m"), "m", {})

    class Busy:
        errored = False

        def get_num_unfinished_requests(self) -> int:
            return 1

    engine._llm = Busy()
    cluster.engine, cluster.state, cluster.served_name = engine, "ready", "m"
    engine.stats.busy_since = engine.stats.updated_at = time.monotonic() - 10
    cluster._watch_progress(engine)
    assert cluster.state == "stalled" and not cluster.ready
    assert cluster.engine_for("m") is engine  # still takes requests: they queue
    engine.stats.updated_at = time.monotonic()
    cluster._watch_progress(engine)
    assert cluster.state == "ready"
