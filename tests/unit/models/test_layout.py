"""bitinglip.models.layout: one rule picks the files to download and judges the directory they make."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bitinglip.models import layout
from bitinglip.models.checks import ModelCheckFailed, check_model_dir
from bitinglip.models.hub import HubFile
from bitinglip.models.hub import select_files as hub_select_files

CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()
SAFETENSORS = struct.pack("<Q", 2) + b"{}"  # a header listing no tensors: enough for the directory's facts


def write_repo(path: Path, names: list[str]) -> list[HubFile]:
    """Files as the hub would list them, and the same files written under ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        data = CONFIG if name == "config.json" else SAFETENSORS if name.endswith(".safetensors") else b"x" * 8
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
        files.append(HubFile(path=name, size=len(data)))
    return files


def check_problems(path: Path, files: list[HubFile]) -> str:
    try:
        check_model_dir(path, files, supported=None)
    except ModelCheckFailed as e:
        return e.message
    return ""


def test_hub_reexports_the_selection() -> None:
    assert hub_select_files is layout.select_files


def test_training_state_is_no_weights_for_either_decision(tmp_path: Path) -> None:
    repo = ["config.json", "tokenizer.json", "training_args.bin", "optimizer.bin"]
    files = write_repo(tmp_path / "repo", repo)
    kept = {f.path for f in layout.select_files(files)}
    assert kept == {"config.json", "tokenizer.json"}  # no weights picked...
    assert "no weights" in check_problems(tmp_path / "repo", files)  # ...and none found
    assert layout.missing_parts(repo) == ["no weights (*.safetensors or *.bin)"]


def test_a_tokenizer_part_that_cannot_load_alone_is_no_tokenizer(tmp_path: Path) -> None:
    repo = ["config.json", "merges.txt", "tokenizer_config.json", "model.safetensors"]
    files = write_repo(tmp_path / "repo", repo)
    assert {f.path for f in layout.select_files(files)} == set(repo)  # downloaded: they belong to a tokenizer
    assert "no tokenizer" in check_problems(tmp_path / "repo", files)  # but none of them loads one alone
    assert not any(layout.is_tokenizer_source(n) for n in repo)
    assert all(layout.is_tokenizer_file(n) for n in ("merges.txt", "tokenizer_config.json"))


@pytest.mark.parametrize(
    "repo",
    [
        ["config.json", "tokenizer.json", "model.safetensors", "pytorch_model.bin", "training_args.bin"],
        ["config.json", "vocab.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
        ["config.json", "tokenizer.model", "consolidated.safetensors"],
        ["config.json", "tokenizer.model", "consolidated.safetensors", "model-00001-of-00001.safetensors"],
        ["config.json", "qwen.tiktoken", "model.safetensors", "modeling_qwen.py"],
        ["config.json", "tokenizer.json", "onnx/model.onnx", "model.gguf"],
        ["config.json", "README.md", "optimizer.bin", "rng_state.bin", "scheduler.bin"],
    ],
)
def test_the_selection_keeps_what_the_check_needs(tmp_path: Path, repo: list[str]) -> None:
    everything = write_repo(tmp_path / "all", repo)
    selected = layout.select_files(everything)
    only_selected = write_repo(tmp_path / "selected", [f.path for f in selected])
    root_names = [n for n in repo if "/" not in n]
    # Whatever the whole repo lacks, the selected files lack too, and nothing more.
    assert layout.missing_parts(f.path for f in selected) == layout.missing_parts(root_names)
    expected = "; ".join(layout.missing_parts(root_names))
    assert check_problems(tmp_path / "selected", only_selected) == expected
    assert check_problems(tmp_path / "all", everything) == expected


def test_predicates() -> None:
    assert layout.is_weights("model.safetensors") and layout.is_weights("pytorch_model.bin")
    assert not layout.is_weights("training_args.bin") and not layout.is_weights("model.gguf")
    assert layout.is_doc("license.md") and not layout.is_doc("readme_helper.py")
    assert layout.is_config_file("generation_config.json") and not layout.is_config_file("tokenizer.json")
