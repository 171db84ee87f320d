"""What several commands share: settings from the command line, the app's components for the commands that work
on the database directly, and human-readable sizes, times and durations.

Importing it is cheap (the standard library's argparse and typing): `bitinglip --help` builds every command's
parser, so what a command needs to run is imported when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the app imports every module (and, through the cluster, vLLM): only when a command needs it
    from datetime import datetime

    from bitinglip.app import Components

    # What `add_subparsers()` returns: each command module adds its commands to it.
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


Command = Callable[["Components", argparse.Namespace], Awaitable[int]]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    server = {
        k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None))) if v is not None
    }
    out: dict[str, Any] = {"server": server} if server else {}
    if getattr(args, "model", None) is not None:
        out["cluster"] = {"model": args.model}
    return out


def _with_components(work: Command) -> Callable[[argparse.Namespace], int]:
    """Run ``work(components, args)`` inside `Components.running(serve=False)`: the database open, and on the way
    out (Ctrl-C too) pulls stopped with their partial files kept, so the next pull resumes them."""

    def run(args: argparse.Namespace) -> int:
        import asyncio

        import msgspec

        from bitinglip.app import Components
        from bitinglip.core import configure_logging, load_settings

        loaded = load_settings(_overrides(args))
        server = loaded.settings.server
        # The command's own output (tables, the progress bar) is what the user reads: info events would
        # drown it, so only warnings and errors are logged unless debug logging is asked for.
        quiet = server if server.log_level == "debug" else msgspec.structs.replace(server, log_level="warning")
        configure_logging(quiet, loaded.settings.env)

        async def main() -> int:
            async with Components(loaded).running(serve=False) as components:
                return await work(components, args)

        return asyncio.run(main())

    return run


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
