"""LoRA adapters in PEFT's layout: what one says of itself, whether it fits its base, and tiny random ones.

A PEFT adapter is a folder with `adapter_config.json` (its base, rank, alpha, target modules) and
`adapter_model.safetensors`, whose tensors are named after the base's modules:
`base_model.model.<module>.lora_A.weight` of shape (rank, in) and `...lora_B.weight` of shape (out, rank) for a
base weight `<module>.weight` of shape (out, in). Reading the safetensors headers of both is enough to tell
whether an adapter fits its base, without loading either. Blocking (file reads): callers use a worker thread.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from bitinglip.core import InvalidInput

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
WEIGHTS_FILES = (WEIGHTS_FILE, "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
# What a LoRA tensor's name ends with: its module is the rest.
_LORA_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}
# The embedding LoRA of PEFT (lora_embedding_A/B): vLLM no longer serves adapters of the embeddings.
_EMBEDDING_MARK = ".lora_embedding_"
TINY_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class AdapterFacts(msgspec.Struct, kw_only=True):
    """What an adapter folder says about itself."""

    base_model: str | None  # `base_model_name_or_path`: a hub id or a path, as its trainer wrote it
    rank: int  # the largest rank of its modules (vLLM's max_lora_rank must cover it)
    alpha: float
    target_modules: list[str]
    size_bytes: int
    config: dict[str, Any]  # adapter_config.json as it is (vLLM's own checks read it)


def is_adapter_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{path} is not an adapter: it has no {CONFIG_FILE}", param="path") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path / CONFIG_FILE} does not parse: {exc}", param="path") from None
    if not isinstance(config, dict):
        raise InvalidInput(f"{path / CONFIG_FILE} is not a JSON object", param="path")
    return config


def read_adapter(path: Path) -> AdapterFacts:
    """The facts of an adapter folder; InvalidInput naming the field that is missing or wrong."""
    config = read_config(path)
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        raise InvalidInput(
            f"{CONFIG_FILE}: peft_type is {peft_type}; only LoRA adapters can be served", param="peft_type"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise InvalidInput(f"{CONFIG_FILE}: `r` (the rank) must be a positive integer, not {rank!r}", param="r")
    patterns = config.get("rank_pattern") or {}
    ranks = [rank, *(v for v in patterns.values() if isinstance(v, int))] if isinstance(patterns, dict) else [rank]
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidInput(f"{CONFIG_FILE}: `target_modules` must list module names", param="target_modules")
    weights = next((path / f for f in WEIGHTS_FILES if (path / f).is_file()), None)
    if weights is None:
        raise InvalidInput(f"{path} has no adapter weights ({' or '.join(WEIGHTS_FILES)})", param="path")
    alpha = config.get("lora_alpha", rank)
    base = config.get("base_model_name_or_path")
    return AdapterFacts(
        base_model=base if isinstance(base, str) and base else None,
        rank=max(ranks),
        alpha=float(alpha) if isinstance(alpha, (int, float)) else float(rank),
        target_modules=sorted(targets),
        size_bytes=sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
        config=config,
    )


def _header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def base_shapes(base_dir: Path) -> dict[str, list[int]]:
    """Every tensor of the base model by name, with its shape (from its safetensors headers)."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(base_dir.glob("*.safetensors")):
        shapes.update({name: t["shape"] for name, t in _header(file).items()})
    return shapes


def fit_problems(adapter_dir: Path, base_dir: Path) -> list[str]:
    """Why the adapter's tensors do not fit the base's modules ([] when they do): a module the base has not, a
    LoRA of the embeddings, or shapes that do not match. Only safetensors adapters are read (a `.bin` is left to
    the engine)."""
    weights = adapter_dir / WEIGHTS_FILE
    if not weights.is_file():
        return []
    base = base_shapes(base_dir)
    if not base:
        return []  # a base without safetensors: nothing to compare with
    problems: list[str] = []
    for name, tensor in sorted(_header(weights).items()):
        module, kind = _lora_module(name)
        if _EMBEDDING_MARK in name:
            problems.append(f"{name}: a LoRA of the embeddings, which vLLM does not serve")
            continue
        if kind is None:
            problems.append(f"{name}: not a LoRA tensor (lora_A or lora_B of a module)")
            continue
        target = base.get(f"{module}.weight")
        if target is None:
            problems.append(f"{name}: the base has no module {module}")
            continue
        shape = tensor["shape"]
        if len(target) != 2 or len(shape) != 2:
            problems.append(f"{name}: {module} is not a linear layer of the base")
            continue
        out_features, in_features = target
        fits = shape[1] == in_features if kind == "A" else shape[0] == out_features
        if not fits:
            side = f"in_features {in_features}" if kind == "A" else f"out_features {out_features}"
            problems.append(f"{name} has shape {shape}, which does not fit {module} of the base ({side})")
        if len(problems) >= 5:
            problems.append("...")
            break
    return problems


def _lora_module(name: str) -> tuple[str, str | None]:
    """(the base module a PEFT tensor name belongs to, "A" or "B"; None when it is not a LoRA tensor)."""
    body = name.removeprefix(PEFT_PREFIX)
    for suffix, kind in _LORA_SUFFIXES.items():
        if body.endswith(suffix):
            return body.removesuffix(suffix), kind
    return body, None


def create_tiny_adapter(
    dest: Path,
    base_dir: Path,
    *,
    base_name: str,
    seed: int = 1,
    rank: int = 8,
    targets: tuple[str, ...] = TINY_TARGETS,
) -> Path:
    """Write a random LoRA adapter of the model at ``base_dir`` to ``dest`` in PEFT's layout and return it.

    Unlike PEFT's initialisation (lora_B zero: no change until trained), both halves are random and non-zero, so
    the adapter changes the base's output; the same ``seed`` gives the same bytes.
    """
    from safetensors.numpy import save_file  # with transformers, as the tiny model itself

    shapes = base_shapes(base_dir)
    modules = sorted(
        name.removesuffix(".weight")
        for name, shape in shapes.items()
        if len(shape) == 2 and name.endswith(".weight") and name.removesuffix(".weight").rsplit(".", 1)[-1] in targets
    )
    if not modules:
        raise InvalidInput(f"the model at {base_dir} has none of the modules {', '.join(targets)}", param="base")
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    bound = (
        0.0866  # uniform in [-b, b]: std 0.05, so B @ A * alpha / r moves the base's weights by about their own size
    )
    for module in modules:
        out_features, in_features = shapes[f"{module}.weight"]
        a = ((rng.random((rank, in_features)) * 2 - 1) * bound).astype(np.float32)
        b = ((rng.random((out_features, rank)) * 2 - 1) * bound).astype(np.float32)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / WEIGHTS_FILE))
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (dest / "README.md").write_text(
        f"# A random LoRA adapter of {base_name}\n\nRandom weights (seed {seed}, rank {rank}): BitingLip's tests and "
        "offline examples use it to show adapters served per request. It knows nothing.\n",
        encoding="utf-8",
    )
    return dest
