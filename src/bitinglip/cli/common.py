"""What several commands share: settings from the command line, and human-readable sizes, times and durations."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bitinglip.core import LoadedSettings, configure_logging, load_settings

if TYPE_CHECKING:
    # What `add_subparsers()` returns: each command module adds its commands to it.
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    server = {
        k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None))) if v is not None
    }
    out: dict[str, Any] = {"server": server} if server else {}
    if getattr(args, "model", None) is not None:
        out["cluster"] = {"model": args.model}
    return out


def _load(args: argparse.Namespace) -> LoadedSettings:
    loaded = load_settings(_overrides(args))
    configure_logging(loaded.settings.server, loaded.settings.env)
    return loaded


def _size(n: int | None) -> str:
    if not n:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"
