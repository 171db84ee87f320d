"""What a downloaded model must pass before it is marked ready: files whole, config sane, servable by vLLM.

Blocking (it reads config.json, stats every file and reads the safetensors headers): callers use a thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Set
from pathlib import Path

from bitinglip.core import BitingLipError
from bitinglip.models.hub import HubFile
from bitinglip.models.layout import missing_parts
from bitinglip.models.registry import ModelFacts, inspect_dir


class ModelCheckFailed(BitingLipError):
    """The files arrived but are not a model this server can serve; the message says why."""

    status = 422
    type = "invalid_model"
    code = "model_check_failed"


def _file_problems(path: Path, expected: Iterable[HubFile]) -> list[str]:
    problems: list[str] = []
    for f in expected:
        on_disk = path / f.path
        if not on_disk.is_file():
            problems.append(f"{f.path} is missing")
        elif (size := on_disk.stat().st_size) != f.size:
            problems.append(f"{f.path} has {size} bytes, the hub lists {f.size}")
    return problems


def check_files(path: Path, expected: Iterable[HubFile]) -> None:
    """Every file the hub lists is there with its size (an adapter's check; a model's is `check_model_dir`)."""
    if problems := _file_problems(path, expected):
        raise ModelCheckFailed("; ".join(problems))


def check_model_dir(path: Path, expected: Iterable[HubFile], supported: Set[str] | None) -> ModelFacts:
    """Return the model's facts, or raise ModelCheckFailed listing every problem found.

    ``supported`` is the set of architectures the installed vLLM serves; None skips that check.
    """
    problems = _file_problems(path, expected)

    config: object = None
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        problems.append("config.json is missing")
    except (OSError, ValueError) as e:
        problems.append(f"config.json does not parse: {e}")
    if config is not None and not isinstance(config, dict):
        problems.append("config.json is not a JSON object")
    elif isinstance(config, dict):
        architectures = config.get("architectures")
        if not (isinstance(architectures, list) and architectures and all(isinstance(a, str) for a in architectures)):
            problems.append("config.json names no architecture")
        elif supported is not None and not any(a in supported for a in architectures):
            problems.append(f"architecture {', '.join(architectures)} is not one the installed vLLM supports")

    names = {p.name for p in path.iterdir() if p.is_file()} if path.is_dir() else set()
    problems.extend(missing_parts(names))

    if problems:
        raise ModelCheckFailed("; ".join(problems))
    return inspect_dir(path)


def bytes_on_disk(path: Path, files: Iterable[HubFile], partial_dir: str) -> int:
    """Bytes of ``files`` already under ``path``: finished files and partials a resumed download keeps."""
    total = 0
    for f in files:
        final, part = path / f.path, path / partial_dir / f"{f.path}.part"
        if final.is_file() and final.stat().st_size == f.size:
            total += f.size
        elif part.is_file():
            total += min(part.stat().st_size, f.size)
    return total


def files_present(path: Path, files: Iterable[HubFile]) -> bool:
    """Every file there with the size the hub lists (hashes were checked when they were downloaded)."""
    return all((p := path / f.path).is_file() and p.stat().st_size == f.size for f in files)
