"""Which files make a servable model: the one rule behind both the download selection and the check after it.

vLLM reads a Hugging Face style directory from its root: ``config.json``, a tokenizer, and weights
(safetensors, or PyTorch ``*.bin`` when a repo has no safetensors). ``select_files`` picks those (plus the
files that go with them) from a repo listing; ``missing_parts`` says what a downloaded directory lacks. Both
use the vocabulary and the predicates below.

Names only: no network, no disk, no ``huggingface_hub``. The predicates take a file name as given; the
selection lower-cases the hub's names first, the check looks at the names on disk as they are.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

# Tokenizer, chat-template and processor files: all are downloaded when the repo has them.
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "added_tokens.json",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
        "preprocessor_config.json",
        "processor_config.json",
    }
)
# Any one of these (or a *.tiktoken) is a tokenizer transformers, and so vLLM, can load.
TOKENIZER_SOURCES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TIKTOKEN_SUFFIX = ".tiktoken"
# adapter_config.json: a LoRA adapter's (its weights are adapter_model.safetensors, or .bin).
CONFIG_FILES = frozenset(
    {"config.json", "generation_config.json", "model.safetensors.index.json", "adapter_config.json"}
)
SAFETENSORS_SUFFIX = ".safetensors"
PYTORCH_SUFFIX = ".bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
# Mistral repos ship the same weights twice: HF shards and one consolidated.safetensors for mistral-format loading.
CONSOLIDATED_PREFIX = "consolidated"
# Trainer leftovers that share the .bin extension but are not weights.
TRAINING_STATE = ("training_args", "optimizer", "scheduler", "rng_state")
DOC_PREFIXES = ("readme", "license", "licence", "notice", "use_policy")
# Extra chat templates are read by transformers from this folder; nothing else below the root is.
CHAT_TEMPLATES_DIR = "additional_chat_templates"


def is_safetensors(name: str) -> bool:
    return name.endswith(SAFETENSORS_SUFFIX)


def is_pytorch_weights(name: str) -> bool:
    """A PyTorch ``*.bin`` that holds weights, not a trainer's state."""
    return name.endswith(PYTORCH_SUFFIX) and not name.startswith(TRAINING_STATE)


def is_weights(name: str) -> bool:
    return is_safetensors(name) or is_pytorch_weights(name)


def is_tokenizer_file(name: str) -> bool:
    """Part of a tokenizer, chat template or processor."""
    return name in TOKENIZER_FILES or name.endswith(TIKTOKEN_SUFFIX)


def is_tokenizer_source(name: str) -> bool:
    """Enough, alone, for a tokenizer to load."""
    return name in TOKENIZER_SOURCES or name.endswith(TIKTOKEN_SUFFIX)


def is_config_file(name: str) -> bool:
    return name in CONFIG_FILES


def is_doc(name: str) -> bool:
    """README, LICENSE and the like (lower-case name); never code."""
    return name.startswith(DOC_PREFIXES) and not name.endswith(".py")


def missing_parts(names: Iterable[str]) -> list[str]:
    """What a model directory whose root holds the files ``names`` lacks to be served: [] when nothing."""
    names = set(names)
    problems: list[str] = []
    if not any(is_weights(n) for n in names):
        problems.append(f"no weights (*{SAFETENSORS_SUFFIX} or *{PYTORCH_SUFFIX})")
    if not any(is_tokenizer_source(n) for n in names):
        problems.append(f"no tokenizer (one of {', '.join(TOKENIZER_SOURCES)} or *{TIKTOKEN_SUFFIX})")
    return problems


class RepoEntry(Protocol):
    """A file of a repo as the selection sees it: its '/'-separated path from the repo root."""

    @property
    def path(self) -> str: ...


EntryT = TypeVar("EntryT", bound=RepoEntry)


def select_files(
    files: Iterable[EntryT],
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
) -> list[EntryT]:
    """Keep what vLLM needs from a repo, then apply the user's fnmatch patterns (which can only narrow).

    Kept: configs, tokenizer and chat-template files, README/LICENSE and the safetensors weights with their
    index, all at the repo root (vLLM reads a HF-style directory from its root). PyTorch ``*.bin`` weights
    are a fallback kept only when the repo has no safetensors at all. Code (``*.py``) and every other format
    (gguf, onnx, openvino, flax, tf...) are dropped.
    """
    files = list(files)
    root_safetensors = [f for f in files if "/" not in f.path and is_safetensors(f.path)]
    has_safetensors = bool(root_safetensors)
    has_hf_shards = any(not f.path.startswith(CONSOLIDATED_PREFIX) for f in root_safetensors)

    def wanted(f: EntryT) -> bool:
        path = f.path
        if "/" in path:
            top, _, rest = path.partition("/")
            return top == CHAT_TEMPLATES_DIR and "/" not in rest and rest.endswith(".jinja")
        name = path.lower()
        if is_safetensors(name):
            return not (name.startswith(CONSOLIDATED_PREFIX) and has_hf_shards)
        if is_config_file(name) or is_tokenizer_file(name) or is_doc(name):
            return True
        if not has_safetensors:  # PyTorch weights only as a fallback
            return name == PYTORCH_INDEX or is_pytorch_weights(name)
        return False

    selected = [f for f in files if wanted(f)]
    if allow_patterns:
        allow = _directory_patterns(allow_patterns)
        selected = [f for f in selected if any(fnmatch.fnmatchcase(f.path, p) for p in allow)]
    if ignore_patterns:
        ignore = _directory_patterns(ignore_patterns)
        selected = [f for f in selected if not any(fnmatch.fnmatchcase(f.path, p) for p in ignore)]
    return selected


def _directory_patterns(patterns: Sequence[str]) -> list[str]:
    # Same convention as huggingface_hub: "folder/" means everything below it.
    return [p + "*" if p.endswith("/") else p for p in patterns]
