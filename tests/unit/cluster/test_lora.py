"""LoRA adapters in the cluster: the engine arguments that serve a base's adapters and the memory they hold, and
requests naming an adapter, on scripted engines: leased on the base's engine, which starts with LoRA sized for its
adapters and restarts (only when idle) for one it does not cover."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster_support import cpu, settings, until

from bitinglip.cluster import Adapter, Cluster
from bitinglip.cluster.vllm.lora import lora_args, lora_bytes, uncovered
from bitinglip.core import DeploymentSettings, InvalidInput, NotFound, Unavailable
from doubles import FakeCatalog, ScriptedFactory


def adapter(name: str, rank: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj"), base: str = "a") -> Adapter:
    return Adapter(name=name, base=base, path=f"/adapters/{name}", rank=rank, target_modules=targets)


def test_lora_args_are_sized_for_the_adapters_and_keep_what_the_settings_give() -> None:
    assert lora_args({"max_model_len": 2048}, []) == {"max_model_len": 2048}  # no adapters: LoRA stays off
    args = lora_args({}, [adapter("x", 8), adapter("y", 12, ("o_proj",))])
    assert args["enable_lora"] is True
    assert args["max_lora_rank"] == 16  # the smallest rank vLLM takes that covers 12
    assert args["lora_target_modules"] == ["o_proj", "q_proj", "v_proj"]
    assert args["max_loras"] == 4 and args["max_cpu_loras"] == 16
    given = lora_args({"max_loras": 32, "max_lora_rank": 64}, [adapter("x")])
    assert given["max_loras"] == 32 and given["max_lora_rank"] == 64 and given["max_cpu_loras"] == 32
    assert lora_args({"enable_lora": False}, [adapter("x")]) == {"enable_lora": False}
    # Turned on by the settings without adapters yet: every module, vLLM's rank.
    assert lora_args({"enable_lora": True}, [])["max_loras"] == 4
    # A slot for each adapter in one batch, 8 at most.
    assert lora_args({}, [adapter(f"a{i}") for i in range(6)])["max_loras"] == 6
    assert lora_args({}, [adapter(f"a{i}") for i in range(20)])["max_loras"] == 8


def test_uncovered_says_why_an_engine_cannot_serve_an_adapter() -> None:
    args = lora_args({}, [adapter("x", 8)])
    assert uncovered(args, adapter("x")) is None
    assert "without LoRA" in (uncovered({}, adapter("x")) or "")
    assert "max_lora_rank" in (uncovered(args, adapter("big", 32)) or "")
    assert "not gate_proj" in (uncovered(args, adapter("mlp", 8, ("gate_proj",))) or "")


def test_lora_bytes_count_the_slots_of_the_adapted_layers(tmp_path: Path) -> None:
    config = {
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "intermediate_size": 512,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert lora_bytes(tmp_path, {}, cpu=True) == 0
    qv = {
        "enable_lora": True,
        "max_lora_rank": 8,
        "max_loras": 4,
        "max_cpu_loras": 16,
        "lora_target_modules": ["q_proj", "v_proj"],
    }
    per_rank = (256 + 256) + (256 + 128)  # q: 256 in, 4 x 64 out; v: 256 in, 2 x 64 out
    assert lora_bytes(tmp_path, qv, cpu=False) == 2 * per_rank * 8 * 4 * 2
    assert lora_bytes(tmp_path, qv, cpu=True) == 2 * per_rank * 8 * (4 + 16) * 2
    packed = lora_bytes(tmp_path, qv | {"lora_target_modules": ["qkv_proj"]}, cpu=False)
    assert packed == 2 * (per_rank + 256 + 128) * 8 * 4 * 2  # qkv_proj stands for q, k and v


def build(
    tmp_path: Path, factory: ScriptedFactory, catalog: FakeCatalog, *specs: DeploymentSettings, **kw: object
) -> Cluster:
    """A cluster on the CPU declaring ``specs``, its registry ``catalog``."""
    return Cluster(
        settings(deployments=list(specs), **kw),
        catalog,
        run_dir=tmp_path / "run",
        factory=factory,
        probe_devices=cpu(),
        cpu_platform=True,
    )


@pytest.fixture
async def lora_cluster(tmp_path: Path, factory: ScriptedFactory) -> AsyncIterator[tuple[Cluster, FakeCatalog]]:
    catalog = FakeCatalog(tmp_path, ["a", "b"], [adapter("x"), adapter("y")])
    c = build(tmp_path, factory, catalog, DeploymentSettings(model="a"))
    await c.start()
    await until(lambda: c.ready)
    yield c, catalog
    await c.stop()


async def test_an_adapter_is_served_on_its_base_engine_started_with_lora(
    lora_cluster: tuple[Cluster, FakeCatalog], factory: ScriptedFactory
) -> None:
    c, _ = lora_cluster
    (engine,) = factory.made
    assert engine.served_name == "a" and c.deployments["a"].engine_args["enable_lora"] is True
    lease = await c.acquire("x")
    assert lease.engine is engine and engine.adapters == ["x"]  # the double answers as itself, holding x
    assert c.capacity("x") == c.capacity("a") and c.capacity("x")[1] == 1  # the base's slots and its in-flight
    lease.release()
    assert len(factory.made) == 1  # no engine of its own
    served = {m.name: m for m in await c.served_models()}
    assert served["x"].parent == "a" and served["x"].state == "ready" and served["a"].parent is None
    status = {s.name: s for s in c.status()}
    assert status["a"].adapters == ["x", "y"] and status["a"].replicas[0].adapters == ["x"]
    with pytest.raises(NotFound):
        await c.acquire("nope")


async def test_an_adapter_of_a_base_not_deployed_loads_the_base_on_demand(
    lora_cluster: tuple[Cluster, FakeCatalog], factory: ScriptedFactory
) -> None:
    c, catalog = lora_cluster
    catalog.adapter_list.append(adapter("z", base="b"))
    lease = await c.acquire("z")
    lease.release()
    assert c.deployments["b"].on_demand and c.deployments["b"].engine_args["lora_target_modules"] == [
        "q_proj",
        "v_proj",
    ]
    assert [e.served_name for e in factory.made] == ["a", "b"]


async def test_an_engine_restarts_with_lora_for_an_adapter_it_does_not_cover_once_idle(
    lora_cluster: tuple[Cluster, FakeCatalog], factory: ScriptedFactory
) -> None:
    c, catalog = lora_cluster
    catalog.adapter_list.append(adapter("wide", rank=32, targets=("gate_proj",)))
    busy = await c.acquire("a")
    with pytest.raises(Unavailable) as refused:  # a request in flight: not restarted under it
        await c.acquire("wide")
    assert refused.value.code == "adapter_pending" and refused.value.retry_after == 5
    assert "max_lora_rank" in refused.value.message and len(factory.made) == 1
    busy.release()
    lease = await c.acquire("wide")  # idle now: restarted, and this request waited for it
    lease.release()
    assert len(factory.made) == 2 and factory.made[0].calls[-1] == "stop"
    args = c.deployments["a"].engine_args
    assert args["max_lora_rank"] == 32 and args["lora_target_modules"] == ["gate_proj", "q_proj", "v_proj"]
    assert c.deployments["a"].estimate is not None


async def test_settings_that_rule_an_adapter_out_are_a_clear_error(tmp_path: Path, factory: ScriptedFactory) -> None:
    catalog = FakeCatalog(tmp_path, ["a"], [adapter("x", rank=32)])
    spec = DeploymentSettings(model="a", engine={"enable_lora": True, "max_lora_rank": 16})
    c = build(tmp_path, factory, catalog, spec)
    await c.start()
    try:
        await until(lambda: c.ready)
        with pytest.raises(InvalidInput) as refused:
            await asyncio.wait_for(c.acquire("x"), 5)
        assert refused.value.code == "adapter_not_served" and "max_lora_rank" in refused.value.message
        assert len(factory.made) == 1  # nothing restarted for it
    finally:
        await c.stop()


async def test_an_adapter_whose_base_is_not_served_is_a_404_naming_both(
    tmp_path: Path, factory: ScriptedFactory
) -> None:
    catalog = FakeCatalog(tmp_path, ["a", "b"], [adapter("x", base="b")])
    c = build(tmp_path, factory, catalog, DeploymentSettings(model="a"), load_on_demand=False)
    await c.start()
    try:
        with pytest.raises(NotFound) as refused:
            await c.acquire("x")
        assert "LoRA adapter of b" in refused.value.message and refused.value.code == "model_not_found"
        assert "x" not in {m.name for m in await c.served_models()}  # not listed while its base cannot load
    finally:
        await c.stop()


async def test_adapter_lookups_share_one_registry_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from bitinglip.cluster import adapters as book_module

    reads = 0
    registered = [adapter("x")]

    async def read() -> list[Adapter]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)
        return list(registered)

    book = book_module.AdapterBook(read)
    found = await asyncio.gather(*(book.get("x") for _ in range(64)), *(book.get("nope") for _ in range(64)))
    assert reads == 1 and found.count(registered[0]) == 64 and found.count(None) == 64
    monkeypatch.setattr(book_module, "REFRESH_S", 0.0)  # stale: known names answer at once, one read behind them
    registered.append(adapter("y"))
    assert await asyncio.gather(*(book.get("x") for _ in range(64))) == [registered[0]] * 64
    await asyncio.sleep(0.05)
    assert reads == 2 and book.known("y") == registered[1]
