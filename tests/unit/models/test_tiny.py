"""The tiny model is a pure function of its seed: the same bytes in every process, on every machine."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bitinglip.models.tiny import CHAT_TEMPLATE, TINY_CONTEXT, VOCAB_SIZE, create_tiny_model, is_current

SRC = Path(__file__).resolve().parents[3] / "src"
BUILD = (
    "import sys; from pathlib import Path; from bitinglip.models.tiny import create_tiny_model; "
    "create_tiny_model(Path(sys.argv[1]), seed=int(sys.argv[2]))"
)


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_another_process_builds_the_same_bytes(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Another hash seed (str and set order) and another thread count for the BPE trainer's parallel passes.
    hash_seed = "4321" if os.environ.get("PYTHONHASHSEED") == "1234" else "1234"
    env = os.environ | {
        "PYTHONHASHSEED": hash_seed,
        "RAYON_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    other = tmp_path / "elsewhere" / "tiny-copy"
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(other), "0"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]

    ours, theirs = digests(tiny_model_dir), digests(other)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(ours)
    assert sorted(ours) == sorted(theirs)
    assert ours == theirs
    for name in ours:  # nothing about where it was built
        data = (other / name).read_bytes()
        assert str(tmp_path).encode() not in data and str(tiny_model_dir).encode() not in data, name


def test_another_seed_gives_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = create_tiny_model(tmp_path / "tiny", seed=1)
    assert sorted(digests(other)) == sorted(digests(tiny_model_dir))
    assert digests(other)["model.safetensors"] != digests(tiny_model_dir)["model.safetensors"]
    assert (other / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()


def test_shape_and_special_tokens(tiny_model_dir: Path, tokenizer: Any) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    shape = {k: config[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim")}
    assert shape == {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}
    assert (config["num_hidden_layers"], config["max_position_embeddings"]) == (2, TINY_CONTEXT)
    assert (config["dtype"], config["tie_word_embeddings"]) == ("bfloat16", False)
    assert config["vocab_size"] == len(tokenizer) == VOCAB_SIZE
    assert tokenizer.bos_token == "<|begin_of_text|>" and config["bos_token_id"] == tokenizer.bos_token_id
    assert tokenizer.eos_token == "<|im_end|>" and config["eos_token_id"] == tokenizer.eos_token_id
    assert tokenizer.pad_token == "<|pad|>" and config["pad_token_id"] == tokenizer.pad_token_id
    for special in ("<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>"):
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1, special


def test_tokenizer_round_trips_any_text(tokenizer: Any) -> None:
    rng = random.Random(7)
    noise = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(400))  # no surrogates below U+D800
    samples = [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "def f(x: int) -> int:\n\treturn x ** 2  # squared\n",
        "Ünïcödé façade — naïve café, 東京タワー, Привет мир, مرحبا, 😀🚀 ∑ 𝔘𝔫𝔦",
        "  leading and trailing spaces  \n\n\r\n",
        "zero\u200bwidth, NUL \x00 and DEL \x7f",
        "<|im_start|>user\nspecial tokens inside text<|im_end|>",
        noise,
    ]
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert all(0 <= i < VOCAB_SIZE for i in ids)
        assert tokenizer.decode(ids) == text
    # Trained, not just bytes: common words are single tokens or close to it.
    assert len(tokenizer.encode(" the model", add_special_tokens=False)) <= 3


def test_chat_template_renders(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, ça va?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert text == (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi, ça va?<|im_end|>\n<|im_start|>assistant\n"
    )


# The seed-0 build as made on the reference machine (torch 2.13 CPU, numpy 2.3, tokenizers 0.23, safetensors 0.8).
# A mismatch means this machine builds other bytes than another one, or the build (or a pinned library) changed:
# then check that on purpose, and update these.
SEED0_WEIGHTS = "1e0050d6f252a8079fb97d0a4345f0b530b9c288c02e3da4c642947767bc7605"
SEED0_VOCAB_AND_MERGES = "a6bcd31be74adab068353e4a6905f9049dab50238c09d1ec3bd50e7d83554dae"


def test_seed_0_is_the_reference_build(tiny_model_dir: Path) -> None:
    assert digests(tiny_model_dir)["model.safetensors"] == SEED0_WEIGHTS
    bpe = json.loads((tiny_model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]  # either serialisation
    vocab = sorted(bpe["vocab"].items(), key=lambda item: item[1])
    assert hashlib.sha256(json.dumps([vocab, merges]).encode()).hexdigest() == SEED0_VOCAB_AND_MERGES


def test_the_embedding_build_is_the_same_network_read_as_a_sentence_transformers_model(
    tiny_model_dir: Path, tiny_embedding_dir: Path
) -> None:
    assert digests(tiny_embedding_dir)["model.safetensors"] == digests(tiny_model_dir)["model.safetensors"]
    modules = json.loads((tiny_embedding_dir / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((tiny_embedding_dir / "1_Pooling" / "config.json").read_text())
    assert pooling == {"word_embedding_dimension": 256, "pooling_mode_lasttoken": True}
    assert json.loads((tiny_embedding_dir / "config.json").read_text())["matryoshka_dimensions"] == [64, 128, 256]
    assert not (tiny_model_dir / "modules.json").exists()


def test_a_model_an_older_build_made_is_not_current(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    assert is_current(tiny_model_dir) and not is_current(tiny_model_dir, embedding=True)
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    config = json.loads((old / "tokenizer_config.json").read_text())
    (old / "chat_template.jinja").unlink(missing_ok=True)
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # an older template
    (old / "tokenizer_config.json").write_text(json.dumps(config))
    assert not is_current(old)
    assert not is_current(tmp_path / "missing")


def test_the_chat_template_renders_tools_calls_and_results_in_the_hermes_format(tokenizer: Any) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(tools[0]) in text and text.count("Be brief.") == 1
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        in text
    )
    assert "<|im_start|>tool\n<tool_response>\nsunny\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
