"""The conversation of `bitinglip run` on a terminal: `>>> `, answers streamed as they are generated, `\"\"\"`
for a message of several lines, readline's line editing and history (kept in `<home>/run_history`), and the
slash commands of `ollama run` (/set, /unset, /show, /clear, /bye, /?)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitinglip.core import BitingLipError

if TYPE_CHECKING:
    from bitinglip.cli.chat import Chat
    from bitinglip.cli.cluster import Api

PROMPT, MORE = ">>> ", "... "
BLOCK = '"""'
HISTORY_LINES = 1000

HELP = f"""Available commands:
  /set parameter NAME VALUE   set a sampling parameter (/set parameter alone lists them)
  /set system TEXT            set the system prompt ({BLOCK} for one of several lines)
  /set verbose | quiet        show | hide the tokens and speed after each answer
  /unset parameter NAME       back to the server's default
  /unset system               no system prompt
  /show                       the model, system prompt and parameters
  /clear                      forget the conversation (the system prompt and parameters stay)
  /bye                        leave (Ctrl-D too)
  /?, /help                   this help

Use {BLOCK} to begin a message of several lines and {BLOCK} to end it.
Ctrl-C stops an answer; the part already written stays in the conversation."""


class History:
    """readline's history of entered lines, read from and written to ``path`` (owner-only: it holds what was
    typed). Without readline (not on every platform), input() still works, without history."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.readline: Any = None
        self.warned = False
        try:
            import readline
        except ImportError:
            return
        self.readline = readline
        readline.set_history_length(HISTORY_LINES)
        with contextlib.suppress(OSError):
            readline.read_history_file(str(path))

    def save(self) -> None:
        if self.readline is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(str(self.path))
            os.chmod(self.path, 0o600)
        except OSError as exc:
            if not self.warned:  # once: the conversation goes on without it
                self.warned = True
                print(f"history not saved to {self.path}: {exc.strerror or exc}", file=sys.stderr)


def read_block(first: str) -> str:
    """The lines of a message opened by `\"\"\"` (``first`` is what followed it) up to the line ending in `\"\"\"`."""
    if first.endswith(BLOCK):  # """one line"""
        return first[: -len(BLOCK)]
    lines = [first] if first else []
    while True:
        line = input(MORE)
        if line.endswith(BLOCK):
            if tail := line[: -len(BLOCK)]:
                lines.append(tail)
            return "\n".join(lines)
        lines.append(line)


class Session:
    """One conversation: reads lines, runs commands, sends messages and prints answers."""

    def __init__(self, api: Api, chat: Chat, *, verbose: bool) -> None:
        self.api = api
        self.chat = chat
        self.verbose = verbose

    def command(self, line: str) -> bool:
        """Run a slash command; False when it says to leave."""
        words = line.split(maxsplit=2)
        name, rest = words[0], words[1:]
        if name in ("/bye", "/exit"):
            return False
        if name in ("/?", "/help"):
            print(HELP)
        elif name == "/set":
            self.set(rest)
        elif name == "/unset":
            self.unset(rest)
        elif name == "/show":
            print(self.show(rest[0] if rest else None))
        elif name == "/clear":
            self.chat.messages.clear()
            print("Cleared the conversation.")
        else:
            raise BitingLipError(f"unknown command {name!r}: /? lists the commands")
        return True

    def set(self, rest: list[str]) -> None:
        from bitinglip.cli.chat import PARAMETERS

        what = rest[0] if rest else ""
        if what == "parameter":
            args = rest[1].split(maxsplit=1) if len(rest) > 1 else []
            if not args:
                print("parameters: " + ", ".join(PARAMETERS))
                return
            if len(args) < 2:
                raise BitingLipError(f"/set parameter {args[0]} VALUE: which value?")
            name = self.chat.set_parameter(args[0], args[1].strip())
            print(f"Set parameter {name!r} to {self.chat.parameters[name]!r}.")
        elif what == "system":
            text = rest[1] if len(rest) > 1 else ""
            text = read_block(text[len(BLOCK) :]) if text.startswith(BLOCK) else text
            self.chat.system = text or None
            print("Set system message." if text else "Cleared system message.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            print(f"Set {what} mode.")
        else:
            raise BitingLipError("/set parameter NAME VALUE, /set system TEXT, /set verbose or /set quiet")

    def unset(self, rest: list[str]) -> None:
        if rest[:1] == ["parameter"] and len(rest) > 1:
            self.chat.unset_parameter(rest[1].strip())
            print(f"Unset parameter {rest[1].strip()!r}.")
        elif rest == ["system"]:
            self.chat.system = None
            print("Cleared system message.")
        else:
            raise BitingLipError("/unset parameter NAME or /unset system")

    def show(self, what: str | None) -> str:
        chat = self.chat
        parameters = "\n".join(f"  {k:<20} {v!r}" for k, v in chat.parameters.items()) or "  (the server's defaults)"
        parts = {
            "info": f"model       {chat.model}\nserver      {self.api.url}\nmessages    {len(chat.messages)}",
            "system": f"system      {chat.system!r}" if chat.system else "system      (none)",
            "parameters": f"parameters\n{parameters}",
        }
        if what is None:
            return "\n".join(parts.values())
        if what not in parts:
            raise BitingLipError(f"/show {' | '.join(parts)}")
        return parts[what]

    def send(self, text: str) -> None:
        from bitinglip.cli.run import ensure_served

        # Put away since the last answer (its keep-alive ran out while the user was away): the reload shows its
        # progress line rather than a silent wait. Ctrl-C there returns to the prompt, the message not sent.
        try:
            ensure_served(self.api, self.chat.model)
        except KeyboardInterrupt:
            return
        reply = self.chat.send(self.api, text, sys.stdout, show_reasoning=sys.stdout.isatty())
        if reply.interrupted:
            print("\n^C (stopped)" if reply.text else "^C (stopped before the first token)")
        elif reply.text and not reply.text.endswith("\n"):
            print()
        if self.verbose:
            print(reply.stats(), file=sys.stderr)
        print()

    def turn(self, history: History) -> bool:
        """Read and act on one line (a block for `\"\"\"`); False to leave."""
        try:
            line = input(PROMPT)
            text = read_block(line[len(BLOCK) :]) if line.startswith(BLOCK) else line
        except KeyboardInterrupt:  # at the prompt, as `ollama run` does: it does not leave
            print("\nUse Ctrl + d or /bye to exit.")
            return True
        finally:
            history.save()
        stripped = text.strip()
        if not stripped:
            return True
        try:
            if stripped.startswith("/") and not line.startswith(BLOCK):
                return self.command(stripped)
            self.send(text)
        except BitingLipError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
        return True


def interactive(api: Api, chat: Chat, history_path: Path, *, verbose: bool = False) -> int:
    """The conversation, until /bye or Ctrl-D; 0."""
    history = History(history_path)
    session = Session(api, chat, verbose=verbose)
    try:
        while session.turn(history):
            pass
    except EOFError:  # Ctrl-D
        print()
    finally:
        history.save()
    return 0
