"""Build the tiny default model: a Llama-architecture checkpoint with random weights.

It exists so the whole path (registry, engine, gateway, clients) runs offline on a machine without a GPU.
Its tokenizer is real (byte-level BPE, so it encodes any text and decodes it back) and it has a chat
template, but its weights are random: what it writes is nonsense.

The build is a pure function of the seed and the pinned library versions, so every machine makes the same
bytes: the tokenizer is trained on text generated here from fixed word lists by `random.Random(seed)` (not
on anything read from the machine), and every weight is drawn from a seeded `numpy.random.Generator` with
exact arithmetic only (uniform draws, no transcendental functions) and rounded to bf16 here, so neither
torch's RNG kernels nor the CPU's vector units have a say.

Sizes are chosen for vLLM's CPU build: head_dim must be one its attention kernels accept (64 here).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# ChatML, with tools in the Hermes format (as Qwen's and NousResearch's models write them), so vLLM's `hermes`
# tool parser reads the calls: the tools listed in a system turn, each call as
# <tool_call>{"name": ..., "arguments": {...}}</tool_call>, each result as a `tool` turn in <tool_response>.
_CHAT_TURNS = (
    "{{ bos_token }}"
    "{% if tools %}<|im_start|>system\n"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions. Their signatures are in <tools></tools>:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each call, return a JSON object with the function's name and arguments in <tool_call></tool_call>:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "<|im_start|>assistant\n{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] %}"
    '<tool_call>\n{"name": "{{ call[\'function\'][\'name\'] }}", "arguments": '
    "{{ call['function']['arguments'] | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif message['role'] == 'tool' %}"
    "<|im_start|>tool\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
)
CHAT_TEMPLATE = _CHAT_TURNS + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
# The reasoning variant (`tiny-think`) thinks the way Qwen3 does: `enable_thinking` (default on) opens the answer
# inside <think> so the model continues its reasoning, as DeepSeek-R1's template does, and vLLM's `deepseek_r1`
# parser takes all up to </think> as reasoning; off, the prompt closes an empty reasoning block, so all output is
# content. Past assistant turns are rendered from their `content` alone: reasoning is not sent back.
THINK_START, THINK_END = "<think>", "</think>"
REASONING_CHAT_TEMPLATE = (
    _CHAT_TURNS + "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
VOCAB_SIZE = 512
HIDDEN_SIZE = 256
CORPUS_CHARS = 200_000  # of generated training text: enough for 251 merges, trained in well under a second
WEIGHT_STD = 0.02  # weights are uniform on [-a, a) with this standard deviation: a = std * sqrt(3)
README = (
    "# tiny\n\nA Llama-architecture model with RANDOM weights, made by `bitinglip models create-tiny` "
    "so BitingLip runs offline. Its tokenizer is real; its output is nonsense.\n"
)
EMBEDDING_README = (
    "# tiny-embed\n\nAn embedding model with RANDOM weights, made by `bitinglip models create-tiny --embedding` "
    "so BitingLip serves /v1/embeddings offline: the tiny Llama read as a sentence-transformers model (last-token "
    "pooling, normalized; Matryoshka sizes 64, 128, 256). The same text gives the same vector; nothing else holds.\n"
)
REASONING_README = (
    "# tiny-think\n\nA reasoning model with RANDOM weights, made by `bitinglip models create-tiny --reasoning` so "
    "BitingLip's reasoning output runs offline: the tiny Llama whose chat template opens each answer in <think> "
    "(`enable_thinking`, default true) and whose output closes it with </think> after a few tokens. Serve it with "
    "vLLM's `deepseek_r1` reasoning parser. Its output is nonsense.\n"
)
MATRYOSHKA_DIMENSIONS = [64, 128, 256]
# sentence-transformers' description of the pipeline: vLLM reads it and serves the model with its pooling runner.
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


# Fixed word lists for the generated corpus (comma-separated; their order is part of the build).
def _words(text: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in text.split(","))


_DETERMINERS = _words("the, a, this, that, every, some, no, each, one, another, our, their, its")
_SUBJECTS = _words("I, you, we, they, he, she, it, someone, nobody, everyone")
_ADJECTIVES = _words(
    "small, large, quick, slow, old, new, bright, dark, quiet, loud, simple, strange, early, late, warm, cold, "
    "empty, full, green, blue, red, careful, tired, happy, open, closed, long, short, heavy, light, local, "
    "remote, random, stable, busy, free"
)
_NOUNS = _words(
    "model, server, request, token, engine, queue, river, mountain, city, window, garden, letter, friend, "
    "teacher, machine, question, answer, story, morning, evening, house, road, table, book, library, market, "
    "student, problem, system, network, message, file, number, language, village, winter, summer, kitchen, "
    "computer, page, song, paper, voice, light, door, idea, reason, memory, worker, process, signal, bridge"
)
_VERBS = _words(
    "reads, writes, sends, finds, keeps, builds, opens, closes, starts, stops, answers, follows, carries, "
    "watches, counts, moves, holds, needs, shows, takes, gives, makes, loads, saves, checks, returns, "
    "waits for, looks at, talks to, thinks about, forgets"
)
_ADVERBS = _words("quickly, slowly, again, today, often, never, always, soon, carefully, together")
_PREPOSITIONS = _words("in, on, near, under, behind, after, before, with, without, across, into")
_CONJUNCTIONS = _words("and, but, because, while, so, although, when, until, if, or")
# A little text beyond ASCII, so merges also form inside multi-byte UTF-8 sequences.
_FOREIGN = _words(
    "café, naïve, über, façade, déjà vu, Zürich, São Paulo, crème brûlée, smörgåsbord, fiancée, niño, señor, "
    "Straße, Ærø, jalapeño, piñata, Kraków, Dvořák, Ελλάδα, γεια σου, привет, спасибо, 東京, 日本語, 中文, 你好, "
    "안녕하세요, مرحبا, שלום, नमस्ते, €, °C, —, …"
)
_NAMES = _words(
    "value, result, items, count, index, name, path, data, config, text, tokens, model, request, response, "
    "queue, engine, total, offset, size, limit, user, key, line, state, batch, prompt, output, record, row, "
    "job, worker, timeout, buffer, parts, seed, score"
)
_FUNCTIONS = _words(
    "load, save, parse, build, start, stop, run, fetch, encode, decode, update, check, create, delete, "
    "register, resolve, render, submit, cancel, wait, read, write, split"
)
_CLASSES = _words("Model, Engine, Server, Request, Registry, Queue, Worker, Config, Record, Client")
_MODULES = _words("os, sys, json, math, time, random, asyncio, pathlib, typing, shutil, logging")
_BUILTINS = _words("len, str, int, sorted, list, dict, min, max, sum, print, range, enumerate")
_TYPES = ("int", "str", "float", "bool", "bytes", "list[str]", "dict[str, int]", "Path", "None")
_OPERATORS = _words("+, -, *, //, %, ==, !=, <, >=, and, or, in")


def _sentence(rng: random.Random) -> str:
    def phrase() -> str:
        words = [rng.choice(_DETERMINERS)]
        if rng.random() < 0.6:
            words.append(rng.choice(_ADJECTIVES))
        if rng.random() < 0.08:
            words.append(rng.choice(_FOREIGN))
        words.append(rng.choice(_NOUNS) + ("s" if rng.random() < 0.2 else ""))
        return " ".join(words)

    def clause() -> str:
        subject = rng.choice(_SUBJECTS) if rng.random() < 0.3 else phrase()
        words = [subject, rng.choice(_VERBS), phrase()]
        if rng.random() < 0.4:
            words += [rng.choice(_PREPOSITIONS), phrase()]
        if rng.random() < 0.3:
            words.append(rng.choice(_ADVERBS))
        return " ".join(words)

    text = clause()
    if rng.random() < 0.4:
        text += ("," if rng.random() < 0.5 else "") + " " + rng.choice(_CONJUNCTIONS) + " " + clause()
    if rng.random() < 0.1:
        text += f" ({rng.choice(_FOREIGN)}, {rng.randrange(1, 2000)})"
    ending = rng.choice((".", ".", ".", "!", "?"))
    if rng.random() < 0.1:
        return f'"{text[0].upper()}{text[1:]}{ending}" {rng.choice(_SUBJECTS)} said.'
    return text[0].upper() + text[1:] + ending


def _expression(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"{rng.choice(_NAMES)} {rng.choice(_OPERATORS)} {rng.randrange(0, 1000)}"
    if kind == 1:
        return f"{rng.choice(_BUILTINS)}({rng.choice(_NAMES)})"
    if kind == 2:
        return f"self.{rng.choice(_NAMES)}[{rng.choice(_NAMES)}]"
    if kind == 3:
        return f'"{rng.choice(_NOUNS)} {{{rng.choice(_NAMES)}}}"'
    if kind == 4:
        return f"{rng.choice(_FUNCTIONS)}_{rng.choice(_NAMES)}({rng.choice(_NAMES)}, {rng.choice(_NAMES)}=True)"
    return f"[{rng.choice(_NAMES)} for {rng.choice(_NAMES)} in {rng.choice(_NAMES)}]"


def _code_block(rng: random.Random) -> str:
    """A Python-like function (or class) of a few lines; it need not make sense, only look like code."""
    name = f"{rng.choice(_FUNCTIONS)}_{rng.choice(_NAMES)}"
    args = ", ".join(f"{rng.choice(_NAMES)}: {rng.choice(_TYPES)}" for _ in range(rng.randrange(0, 4)))
    lines: list[str] = []
    if rng.random() < 0.3:
        lines.append(f"import {rng.choice(_MODULES)}")
    if rng.random() < 0.3:
        lines.append(f"class {rng.choice(_CLASSES)}{rng.choice(_CLASSES)}:")
        lines.append(f'    """{_sentence(rng)}"""')
        indent = "    "
        args = "self" + (", " + args if args else "")
    else:
        indent = ""
    lines.append(f"{indent}def {name}({args}) -> {rng.choice(_TYPES)}:")
    if rng.random() < 0.5:
        lines.append(f"{indent}    # {_sentence(rng)}")
    for _ in range(rng.randrange(1, 7)):
        kind = rng.randrange(5)
        var = rng.choice(_NAMES)
        if kind == 0:
            lines.append(f"{indent}    {var} = {_expression(rng)}")
        elif kind == 1:
            lines.append(f"{indent}    if {_expression(rng)}:")
            lines.append(f"{indent}        {var} += {rng.randrange(1, 100)}")
        elif kind == 2:
            lines.append(f"{indent}    for {var} in range({rng.randrange(1, 64)}):")
            lines.append(f"{indent}        {rng.choice(_NAMES)}.append({var})")
        elif kind == 3:
            lines.append(f"{indent}    {rng.choice(_FUNCTIONS)}({var}, {rng.choice(_NAMES)})")
        else:
            lines.append(
                f'{indent}    raise ValueError(f"{rng.choice(_NOUNS)} {{{var}!r}} is {rng.choice(_ADJECTIVES)}")'
            )
    lines.append(f"{indent}    return {_expression(rng)}")
    return "\n".join(lines) + "\n"


def _corpus(seed: int) -> list[str]:
    """The tokenizer's training text: about CORPUS_CHARS of English-like prose and Python-like code."""
    rng = random.Random(seed)
    texts: list[str] = []
    total = 0
    while total < CORPUS_CHARS:
        if rng.random() < 0.55:
            text = " ".join(_sentence(rng) for _ in range(rng.randrange(2, 8))) + "\n"
        else:
            text = _code_block(rng)
        texts.append(text)
        total += len(text)
    return texts


def _train_tokenizer(seed: int, *, reasoning: bool = False) -> Any:  # PreTrainedTokenizerFast
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The trainer breaks ties between equally frequent pairs by token id, so the merges depend only on the text.
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|end_of_text|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    if reasoning:
        # Single tokens (ids 512 and 513, after the trained vocabulary) but not special ones, as in Qwen3's and
        # DeepSeek-R1's tokenizers: decoding with skip_special_tokens keeps them in the text, where parsers look.
        fast.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_START, THINK_END)])
        fast.chat_template = REASONING_CHAT_TEMPLATE
    fast.model_max_length = 2048
    return fast


def _bf16_bits(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Round float32 to bfloat16 (to nearest, ties to even) in integer arithmetic; returns the raw bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)  # no NaN or inf can occur here


def _seeded_weights(model: Any, seed: int) -> None:
    """Overwrite every parameter from `seed`, in sorted-name order: norm weights 1, the rest uniform, std 0.02."""
    import torch

    rng = np.random.default_rng(seed)
    bound = WEIGHT_STD * math.sqrt(3.0)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            param = params[name]
            shape = tuple(param.shape)
            if name.endswith("norm.weight"):
                values = np.ones(shape, dtype=np.float32)
            else:
                # rng.random is exact integer-to-double arithmetic; then only IEEE-rounded * and -.
                values = ((rng.random(shape) * 2.0 - 1.0) * bound).astype(np.float32)
            bits = torch.from_numpy(_bf16_bits(values).view(np.int16)).view(torch.bfloat16)
            param.copy_(bits)


# How `tiny-think` ends its reasoning, with one hidden coordinate as a flag (the coordinate and the trigger tokens are
# drawn from the seed). The embeddings of THINK_TRIGGERS ordinary tokens get THINK_FLAG there, which outweighs the rest
# of the residual stream at their position, so the final RMSNorm leaves nearly all its length on that coordinate; the
# lm_head row of </think> reads that coordinate alone (THINK_GAIN). So </think> is the likely next token (p ~0.85)
# right after a trigger and about as likely as any other token (p ~0.002) after the rest: sampled at temperature 1,
# the reasoning ends after ~8 tokens on average, and later triggers put more </think> in the content. Pointing the
# row at the triggers' plain random embeddings was too weak: they are only ~20% of the final hidden state, the rest
# follows the context, and the logit of </think> drifted by several nats from one prompt to the next.
THINK_TRIGGERS = 64
THINK_FLAG = 2.0
THINK_GAIN = 0.625


def think_triggers(tokenizer: Any, seed: int) -> tuple[int, list[int]]:
    """The flag coordinate and THINK_TRIGGERS ids of trained tokens with a letter in them (never whitespace or `>`,
    which end the prompts, nor special tokens), from a stream of the seed apart from the weights'."""
    rng = np.random.default_rng([seed, 1])
    dim = int(rng.integers(HIDDEN_SIZE))
    eligible = [
        i
        for i in range(VOCAB_SIZE)
        if i not in tokenizer.all_special_ids and any(c.isalpha() for c in tokenizer.decode([i]))
    ]
    order = rng.permutation(len(eligible))
    return dim, sorted(eligible[int(i)] for i in order[:THINK_TRIGGERS])


def _think_end_weights(model: Any, tokenizer: Any, seed: int) -> None:
    """Make </think> likely right after a trigger token: exact constants, no arithmetic on the random weights."""
    import torch

    dim, triggers = think_triggers(tokenizer, seed)
    with torch.no_grad():
        model.get_input_embeddings().weight[triggers, dim] = THINK_FLAG
        head = model.get_output_embeddings().weight[tokenizer.convert_tokens_to_ids(THINK_END)]
        head.zero_()
        head[dim] = THINK_GAIN


# Positions the tiny model takes: a coding agent's whole first request, plus its output. Claude Code's (its ~20k
# tokens of a real tokenizer) is ~73k tokens of this 512-token vocabulary. The weights are random: RoPE takes any
# length as well as any other.
TINY_CONTEXT = 131072


def is_current(dest: Path, *, embedding: bool = False, reasoning: bool = False) -> bool:
    """The model at ``dest`` was built by this version (today's chat template and context): no rebuild needed.

    The chat template also tells the reasoning build (`tiny-think`) from the plain one.
    """
    if embedding != (dest / "modules.json").is_file():
        return False
    try:
        config = json.loads((dest / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    template = config.get("chat_template")
    if template is None and (dest / "chat_template.jinja").is_file():
        template = (dest / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        positions = json.loads((dest / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError):
        return False
    expected = REASONING_CHAT_TEMPLATE if reasoning else CHAT_TEMPLATE
    return bool(template == expected and positions == TINY_CONTEXT)


def create_tiny_model(dest: Path, *, seed: int = 0, embedding: bool = False, reasoning: bool = False) -> Path:
    """Write the tiny model to `dest` (replaced if present) and return it. Takes a few seconds.

    ``embedding``: the same network as an embedding model (a sentence-transformers layout vLLM pools with).
    ``reasoning``: a model that thinks first (`tiny-think`): its tokenizer adds <think> and </think>, its chat
    template opens the answer in <think>, and its output closes that within a few dozen sampled tokens. Its
    weights are drawn the same way, for a vocabulary two tokens larger, so they differ from the plain model's.

    The files are a pure function of `seed` (and the pinned library versions): the same bytes on every machine.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if embedding and reasoning:
        raise ValueError("the tiny model is an embedding model or a reasoning one, not both")
    tokenizer = _train_tokenizer(seed, reasoning=reasoning)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="bfloat16",
        **({"matryoshka_dimensions": MATRYOSHKA_DIMENSIONS} if embedding else {}),
    )
    with torch.random.fork_rng(devices=[]):  # the default initialisation below must not move the caller's RNG
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    _seeded_weights(model, seed)
    if reasoning:
        _think_end_weights(model, tokenizer, seed)
    staging = dest.with_name(f".{dest.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(staging)
    readme = EMBEDDING_README if embedding else REASONING_README if reasoning else README
    (staging / "README.md").write_text(readme, encoding="utf-8")
    if embedding:
        (staging / "modules.json").write_text(json.dumps(ST_MODULES, indent=2), encoding="utf-8")
        (staging / "1_Pooling").mkdir()
        pooling = {"word_embedding_dimension": config.hidden_size, "pooling_mode_lasttoken": True}
        (staging / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2), encoding="utf-8")
        (staging / "2_Normalize").mkdir()
    # Build beside the destination and swap it in whole, so a crash never leaves half a model in place.
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest
