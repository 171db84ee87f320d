"""The `bitinglip` command.

- serve.py: `serve`, the server in the foreground
- settings.py: `settings show`
- models.py: `models ...`, on the registry directly (no server needed)
- cluster.py: `ps`, `deploy`, `undeploy`, `cluster devices`, clients of a running server over HTTP
- common.py: what several of them share

Nothing here imports the app at import time (it imports vLLM): a command that needs it imports it when it runs.
"""

from __future__ import annotations

import argparse
import sys

from bitinglip.cli import cluster, models, serve, settings
from bitinglip.core import BitingLipError, SettingsError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitinglip", description="Run open LLMs on your own machines.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_commands(sub)
    settings.add_commands(sub)
    models.add_commands(sub)
    cluster.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"bitinglip: bad settings: {exc.message}", file=sys.stderr)
        return 2
    except BitingLipError as exc:
        print(f"bitinglip: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
