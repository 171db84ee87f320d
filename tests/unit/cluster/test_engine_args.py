"""Engine arguments are checked against vLLM's own fields; the cluster's defaults and executor reach them."""

from __future__ import annotations

import pytest

from bitinglip.cluster.vllm import check_engine_args, effective_engine_args, engine_env
from bitinglip.core import ClusterSettings, SettingsError


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


def test_model_is_reserved_for_the_deployment() -> None:
    with pytest.raises(SettingsError, match=r"set the model with `model`"):
        check_engine_args({"model": "/x"})


def test_defaults_keep_user_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """The KV cache's size is set once the model is known (test_kv_cache.py), not here."""
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    settings = ClusterSettings(kv_cache_gib=1.5, engine={"max_model_len": 512, "max_num_seqs": 8})
    args = effective_engine_args(settings, {"max_num_seqs": 4})
    assert "kv_cache_memory_bytes" not in args
    assert args["enforce_eager"] is True  # this machine runs vLLM's CPU build
    assert args["max_model_len"] == 512 and args["max_num_seqs"] == 4  # the deployment's own table wins
    assert "distributed_executor_backend" not in args
    mine = effective_engine_args(settings, {"kv_cache_memory_bytes": 123, "enforce_eager": False})
    assert mine["kv_cache_memory_bytes"] == 123 and mine["enforce_eager"] is False


def test_the_ray_executor_and_its_address_reach_the_engine() -> None:
    settings = ClusterSettings(executor="ray", ray_address="10.0.0.1:6379", engine={"pipeline_parallel_size": 2})
    args = effective_engine_args(settings, {"tensor_parallel_size": 4})
    assert args["distributed_executor_backend"] == "ray"
    assert args["tensor_parallel_size"] == 4 and args["pipeline_parallel_size"] == 2
    # vLLM's Ray executor calls ray.init(address=None), which joins the cluster RAY_ADDRESS names.
    assert engine_env(settings, cpu=False).get("RAY_ADDRESS") == "10.0.0.1:6379"
    assert "RAY_ADDRESS" not in engine_env(ClusterSettings(), cpu=False)
    from vllm.engine.arg_utils import AsyncEngineArgs

    parsed = AsyncEngineArgs(model="/m", **args)
    assert parsed.distributed_executor_backend == "ray" and parsed.tensor_parallel_size == 4
