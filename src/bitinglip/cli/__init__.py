"""The `bitinglip` command.

- serve.py: `serve [MODEL]`, the server in the foreground
- run.py: `run MODEL [PROMPT]`, a conversation with a model of a running server, as `ollama run` (chat.py: the
  conversation and one streamed answer; repl.py: the prompt, its slash commands and history), over HTTP
- settings.py: `settings show`
- models.py: `models ...`, on the registry directly (no server needed)
- keys.py: `keys create | list | revoke`, API keys on the database directly (the first admin key before a server)
- usage.py: `usage`, requests and tokens per day, key and model, from the database directly
- cluster.py: `ps`, `deploy`, `undeploy`, `cluster devices`, clients of a running server over HTTP
- tasks.py: `tasks submit | list | show | cancel`, background requests on the server's queue, over HTTP
- batches.py: `batches submit | list | show | cancel`, OpenAI batches (file upload, progress, download), over HTTP
- tables.py: how those clients print what the server answers
- common.py: what several of them share

Building the parser must stay cheap, since every command pays for it (`bitinglip --help` in about 0.1 s): a
command module imports the standard library and `bitinglip.core`'s errors at its top, and what its command needs
(httpx, the settings, msgspec, the app with vLLM) inside the function that runs it.
tests/unit/cli/test_cli_imports.py holds this.
"""

from __future__ import annotations

import argparse
import sys

from bitinglip.cli import batches, cluster, keys, models, run, serve, settings, tasks, usage
from bitinglip.core import BitingLipError, SettingsError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitinglip", description="Run open LLMs on your own machines.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_commands(sub)
    run.add_commands(sub)
    settings.add_commands(sub)
    models.add_commands(sub)
    keys.add_commands(sub)
    usage.add_commands(sub)
    cluster.add_commands(sub)
    tasks.add_commands(sub)
    batches.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives a trailing `nargs="*"` positional only the words before the first option (`run tiny -p
    # temperature=0 why is the sky blue` left "why is the sky blue" unparsed): a command that takes words
    # anywhere names the attribute they go to.
    words_to = getattr(args, "words_to", None)
    if extra and words_to and not any(word.startswith("-") for word in extra):
        setattr(args, words_to, [*getattr(args, words_to), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
