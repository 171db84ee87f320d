"""LoRA adapters in the registry: what an adapter folder says, whether it fits its base, and the service's import,
pull, creation and removal of adapters (a real SQLite file, the hub stand-in, the tiny model as the base)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pull_support import TINY, finished

import hubstub
from bitinglip.core import Conflict, InvalidInput
from bitinglip.models import ModelService
from bitinglip.models.adapters import WEIGHTS_FILE, create_tiny_adapter, fit_problems, read_adapter


@pytest.fixture
def adapter_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return create_tiny_adapter(
        tmp_path / "lora-a", tiny_model_dir, base_name=TINY, seed=1, targets=("q_proj", "v_proj")
    )


@pytest.fixture
async def with_base(service: ModelService, tiny_model_dir: Path) -> ModelService:
    await service.import_dir(tiny_model_dir, "tiny")
    return service


def test_a_tiny_adapter_is_peft_shaped_random_and_the_same_for_a_seed(tmp_path: Path, tiny_model_dir: Path) -> None:
    a = create_tiny_adapter(tmp_path / "a", tiny_model_dir, base_name="tiny", seed=1)
    again = create_tiny_adapter(tmp_path / "again", tiny_model_dir, base_name="tiny", seed=1)
    other = create_tiny_adapter(tmp_path / "other", tiny_model_dir, base_name="tiny", seed=2)
    assert (a / WEIGHTS_FILE).read_bytes() == (again / WEIGHTS_FILE).read_bytes()
    assert (a / WEIGHTS_FILE).read_bytes() != (other / WEIGHTS_FILE).read_bytes()
    config = json.loads((a / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["base_model_name_or_path"] == "tiny"
    facts = read_adapter(a)
    assert facts.rank == 8 and facts.base_model == "tiny"
    assert facts.target_modules == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert fit_problems(a, tiny_model_dir) == []


def test_read_adapter_names_the_field_that_is_wrong(adapter_dir: Path) -> None:
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    for change, param in (
        ({"r": 0}, "r"),
        ({"target_modules": []}, "target_modules"),
        ({"peft_type": "IA3"}, "peft_type"),
    ):
        config_path.write_text(json.dumps(config | change))
        with pytest.raises(InvalidInput) as refused:
            read_adapter(adapter_dir)
        assert refused.value.param == param
    config_path.write_text(json.dumps(config))
    (adapter_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(InvalidInput, match="no adapter weights"):
        read_adapter(adapter_dir)


def test_fit_problems_find_shapes_and_modules_the_base_has_not(tmp_path: Path, tiny_model_dir: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    adapter = create_tiny_adapter(tmp_path / "a", tiny_model_dir, base_name="tiny", targets=("q_proj",))
    prefix = "base_model.model.model.layers.0."
    save_file(
        {
            f"{prefix}self_attn.q_proj.lora_A.weight": np.zeros((8, 128), np.float32),  # the base's in is 256
            f"{prefix}self_attn.z_proj.lora_A.weight": np.zeros((8, 256), np.float32),
            "base_model.model.model.embed_tokens.lora_embedding_A": np.zeros((8, 512), np.float32),
        },
        str(adapter / WEIGHTS_FILE),
    )
    problems = fit_problems(adapter, tiny_model_dir)
    assert any("does not fit model.layers.0.self_attn.q_proj" in p and "in_features 256" in p for p in problems)
    assert any("the base has no module model.layers.0.self_attn.z_proj" in p for p in problems)
    assert any("embeddings" in p for p in problems)


async def test_an_adapter_imports_with_its_base_matched_by_hub_id_or_named(
    service: ModelService, tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput) as refused:  # its base (org/tiny-chat) is not registered
        await service.import_dir(adapter_dir)
    assert refused.value.param == "base_model_name_or_path" and "org/tiny-chat" in refused.value.message
    await service.import_dir(tiny_model_dir, "tiny")
    with pytest.raises(InvalidInput) as refused:  # registered, but under another name and not from the hub
        await service.import_dir(adapter_dir)
    record = await service.import_dir(adapter_dir, "a", base="tiny")
    assert (record.kind, record.base_model, record.lora_rank, record.target_modules) == (
        "adapter",
        "tiny",
        8,
        ["q_proj", "v_proj"],
    )
    assert record.architecture == "LlamaForCausalLM" and record.size_bytes > 0
    assert (await service.registry.require("a")).target_modules == ["q_proj", "v_proj"]  # through the database
    assert [a.name for a in await service.registry.adapters_of("tiny")] == ["a"]
    with pytest.raises(InvalidInput, match="is an adapter itself"):
        await service.import_dir(adapter_dir, "b", base="a")
    with pytest.raises(InvalidInput, match="a model, not an adapter"):
        await service.import_dir(tiny_model_dir, "tiny2", base="tiny")
    with pytest.raises(InvalidInput) as refused:  # an adapter is not a model to load on its own
        await service.resolve_to_load("a")
    assert refused.value.code == "adapter_not_deployable" and "tiny" in refused.value.message


async def test_an_adapter_that_does_not_fit_or_that_vllm_refuses_is_not_registered(
    with_base: ModelService, adapter_dir: Path
) -> None:
    from safetensors.numpy import save_file

    from bitinglip.cluster import peft_problems

    service = with_base
    service.adapter_problems = peft_problems  # the app's: vLLM's own rules
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"use_dora": True}))
    with pytest.raises(InvalidInput) as refused:
        await service.import_dir(adapter_dir, "dora", base="tiny")
    assert refused.value.code == "adapter_does_not_fit" and "DoRA" in refused.value.message
    config_path.write_text(json.dumps(config))
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{module}.lora_A.weight": np.zeros((8, 384), np.float32)}, str(adapter_dir / WEIGHTS_FILE))
    with pytest.raises(InvalidInput) as refused:  # made for a wider model
        await service.import_dir(adapter_dir, "wide", base="tiny")
    assert refused.value.code == "adapter_does_not_fit" and "in_features 256" in refused.value.message
    assert [m.name for m in await service.registry.list_models()] == ["tiny"]


async def test_create_tiny_adapter_and_remove_a_base_with_adapters(with_base: ModelService) -> None:
    service = with_base
    made = await service.create_tiny_adapter("tiny-lora", "tiny", seed=3, rank=16)
    assert made.adapter and made.lora_rank == 16 and made.source == "tiny" and Path(made.path).is_dir()
    with pytest.raises(Conflict) as refused:
        await service.remove("tiny")
    assert refused.value.code == "model_has_adapters" and "tiny-lora" in refused.value.message
    await service.remove("tiny", force=True)  # takes its adapters with it
    assert await service.registry.list_models() == []
    assert not Path(made.path).exists()


async def test_an_adapter_repo_pulls_as_an_adapter_of_its_registered_base(
    with_base: ModelService, stub: hubstub.HubStub, tmp_path: Path, tiny_model_dir: Path, tiny_sha: str
) -> None:
    service = with_base
    pulled_base = await finished(service.pull(TINY))
    assert pulled_base.status().state == "ready", pulled_base.status().error
    create_tiny_adapter(tmp_path / "hub-lora", tiny_model_dir, base_name=TINY, seed=4, targets=("q_proj", "v_proj"))
    (tmp_path / "hub-lora" / "training_args.bin").write_bytes(b"trainer state")  # left on the hub
    stub.add_repo_from_dir("org/tiny-lora", tmp_path / "hub-lora")
    pull = await finished(service.pull("org/tiny-lora"))
    assert pull.status().state == "ready", pull.status().error
    row = await service.registry.require("org/tiny-lora")
    assert (row.kind, row.base_model, row.source, row.lora_rank) == ("adapter", TINY, "hub", 8)
    assert sorted(p.name for p in Path(row.path).iterdir()) == ["README.md", "adapter_config.json", WEIGHTS_FILE]
    # One whose base is not registered fails, saying which base it needs.
    create_tiny_adapter(tmp_path / "orphan", tiny_model_dir, base_name="org/elsewhere", seed=5)
    stub.add_repo_from_dir("org/orphan-lora", tmp_path / "orphan")
    failed = await finished(service.pull("org/orphan-lora"))
    assert failed.status().state == "failed" and "org/elsewhere" in (failed.status().error or "")
    # Its base named: pulled (a trainer often writes a local path there).
    named = await finished(service.pull("org/orphan-lora", base="tiny"))
    assert named.status().state == "ready", named.status().error
    assert (await service.registry.require("org/orphan-lora")).base_model == "tiny"
