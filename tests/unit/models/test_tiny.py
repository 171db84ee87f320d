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

from bitinglip.models.tiny import (
    CHAT_TEMPLATE,
    REASONING_CHAT_TEMPLATE,
    TINY_CONTEXT,
    VOCAB_SIZE,
    create_tiny_model,
    is_current,
    think_triggers,
)

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


# The reasoning build (`tiny-think`): <think> and </think> on top of the same tokenizer, a template that opens the
# answer in <think>, and weights whose sampled output closes it within a few dozen tokens.
SEED0_THINK_WEIGHTS = "ca705017ec07cae8721b09e3b73f0a22685cf6e8b0d19728a164b3a2f70cb4b0"
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def think_tokenizer(tiny_reasoning_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_reasoning_dir)


def test_the_reasoning_build_adds_think_tags_as_single_tokens_that_decoding_keeps(
    tiny_reasoning_dir: Path, think_tokenizer: Any, tokenizer: Any
) -> None:
    tok = think_tokenizer
    start, end = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert (start, end) == (VOCAB_SIZE, VOCAB_SIZE + 1)  # after the trained vocabulary, which is unchanged
    assert json.loads((tiny_reasoning_dir / "config.json").read_text())["vocab_size"] == len(tok) == VOCAB_SIZE + 2
    assert {tok.added_tokens_decoder[i].special for i in (start, end)} == {False}
    assert not {"<think>", "</think>"} & set(tok.all_special_tokens)
    text = "one<think>two\n</think>\n\nthree"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(start) == 1 and ids.count(end) == 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok.encode("<|im_end|>", add_special_tokens=False), skip_special_tokens=True) == ""
    plain = "Hello, world! def f(x): return x"
    assert tok.encode(plain, add_special_tokens=False) == tokenizer.encode(plain, add_special_tokens=False)


def test_the_reasoning_template_opens_the_answer_in_think_or_closes_it_when_thinking_is_off(
    think_tokenizer: Any,
) -> None:
    tok = think_tokenizer
    assert tok.chat_template == REASONING_CHAT_TEMPLATE
    head = (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhy is the sky blue?<|im_end|>\n"
    )
    on = head + "<|im_start|>assistant\n<think>\n"
    assert tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True) == on
    assert tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=True) == on
    off = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert off == head + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tok.apply_chat_template(QUESTION, tokenize=False) == head  # no generation prompt: no <think>
    # A past answer is sent back as its content alone; tools are rendered as in the plain template.
    past = {"role": "assistant", "content": "Rayleigh.", "reasoning_content": "light scatters"}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    text = tok.apply_chat_template([*QUESTION, past, {"role": "user", "content": "And?"}], tools=tools, tokenize=False)
    assert "<|im_start|>assistant\nRayleigh.<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n" in text
    assert "light scatters" not in text and "<think>" not in text and json.dumps(tools[0]) in text


def test_the_deepseek_r1_parser_reads_the_reasoning_build(think_tokenizer: Any) -> None:
    from vllm.reasoning import ReasoningParserManager

    parser = ReasoningParserManager.get_reasoning_parser("deepseek_r1")(think_tokenizer)
    assert parser.extract_reasoning("a plan</think>the answer", None) == ("a plan", "the answer")
    on = think_tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True)["input_ids"]
    off = think_tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, enable_thinking=False, return_dict=True
    )["input_ids"]
    assert not parser.is_reasoning_end(on) and parser.is_reasoning_end(off)  # off: all the output is content


def test_the_reasoning_build_is_a_function_of_the_seed_and_told_apart_from_the_plain_one(
    tiny_reasoning_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    again = create_tiny_model(tmp_path / "tiny-think", reasoning=True)
    assert digests(again) == digests(tiny_reasoning_dir)
    assert digests(again)["model.safetensors"] == SEED0_THINK_WEIGHTS
    assert digests(create_tiny_model(tmp_path / "other", seed=1, reasoning=True))["model.safetensors"] != (
        SEED0_THINK_WEIGHTS
    )
    assert is_current(tiny_reasoning_dir, reasoning=True) and not is_current(tiny_reasoning_dir)
    assert not is_current(tiny_model_dir, reasoning=True)
    with pytest.raises(ValueError, match="not both"):
        create_tiny_model(tmp_path / "both", embedding=True, reasoning=True)


def test_think_end_is_the_likely_next_token_right_after_a_trigger_token_only(
    tiny_reasoning_dir: Path, think_tokenizer: Any
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tok = think_tokenizer
    end = tok.convert_tokens_to_ids("</think>")
    _, triggers = think_triggers(tok, 0)
    assert len(triggers) == 64 and max(triggers) < VOCAB_SIZE
    assert not set(triggers) & set(tok.all_special_ids)
    prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert prompt[-1] not in triggers  # the prompt's last token (\n) does not close the reasoning at once
    others = [i for i in range(VOCAB_SIZE) if i not in triggers and i not in tok.all_special_ids]
    rng = random.Random(3)
    nexts = [*rng.sample(triggers, 8), *rng.sample(others, 8)]
    model = AutoModelForCausalLM.from_pretrained(tiny_reasoning_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([[*prompt, t] for t in [prompt[-1], *nexts]])).logits[:, -1]
    probs = torch.softmax(logits, dim=-1)[:, end].tolist()
    argmax = (logits.argmax(dim=-1) == end).tolist()
    assert argmax == [False] + [True] * 8 + [False] * 8
    assert min(probs[1:9]) > 0.5 and max(probs[9:] + probs[:1]) < 0.02
