"""`bitinglip run MODEL [PROMPT]`: chat with a model of a running server, as `ollama run` does.

A client of the server over HTTP (`/v1/models`, `/tokenize`, `/v1/chat/completions`, and `/api/deployments/{name}`
for the progress when the key may read it), with `BITINGLIP_API_KEY` as its key. It first makes sure the model is
served (a registered model loads on its first request: a progress line shows while it does), then either answers
once (a PROMPT, or text piped in: the answer alone on stdout) or opens a conversation (cli/repl.py).

Building its parser imports nothing beyond argparse; httpx and the settings come when it runs (see cli/__init__.py).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bitinglip.core import BitingLipError

if TYPE_CHECKING:
    from bitinglip.cli.chat import Chat
    from bitinglip.cli.cluster import Api
    from bitinglip.cli.common import Subcommands

PROGRESS_EVERY_S = 0.5
LOAD_REQUEST_TIMEOUT_S = 1800.0
LOAD_RETRY_S = 1.0  # after the server's own wait for a load (`cluster.load_timeout_s`) ran out


def _not_served(model: str, url: str, served: list[str]) -> str:
    """One line: the model is neither served nor registered, what the server has, and how to get it."""
    has = f" (it has: {', '.join(sorted(served))})" if served else " (it has no models)"
    pull = f"bitinglip models pull {model}" if "/" in model else "bitinglip models pull ORG/NAME"
    return (
        f"model {model!r} is not on the server at {url}{has}; `{pull}` downloads one, which the server then loads "
        "on its first request"
    )


def ensure_served(api: Api, model: str) -> None:
    """Return once ``model`` is ready on the server, loading it if need be (with a progress line on stderr, erased
    when it is ready); `BitingLipError` if the server neither serves nor has it, or the load fails."""
    listed = api.request("GET", "/v1/models")["data"]
    card = next((m for m in listed if m.get("id") == model), None)
    if card is None:
        raise BitingLipError(_not_served(model, api.url, [str(m.get("id")) for m in listed]))
    if card.get("status") in (None, "ready"):
        return
    _load(api, model)


def _load(api: Api, model: str) -> None:
    """Ask for the model (`POST /tokenize` leases its engine, which loads it, and generates nothing) in a thread
    while this one shows how the load goes; Ctrl-C stops waiting, not the load."""
    from bitinglip.cli.cluster import Api, _Progress

    failure: list[BaseException] = []

    def request() -> None:
        try:
            with Api(api.url) as own:  # its own connection: this thread polls beside it
                _until_loaded(own, model)
        except BaseException as exc:  # handed to the main thread, which raises it
            failure.append(exc)

    loader = threading.Thread(target=request, name="bitinglip-run-load", daemon=True)
    loader.start()
    progress = _Progress()
    start = time.monotonic()
    readable = True  # whether this key may read /api/deployments (an admin key, or auth off)
    try:
        while loader.is_alive():
            reason = None
            if readable:
                status, readable = _deployment(api, model)
                reason = (status or {}).get("reason") if (status or {}).get("state") == "loading" else None
            detail = f"{reason}, " if reason else ""
            progress.show(f"loading {model}... {detail}{int(time.monotonic() - start)} s")
            loader.join(PROGRESS_EVERY_S)
    except KeyboardInterrupt:
        progress.done()
        print(f"stopped waiting: {model} goes on loading on the server (`bitinglip ps` shows it)", file=sys.stderr)
        raise
    progress.done()
    if failure:
        raise failure[0]


def _until_loaded(api: Api, model: str) -> None:
    import httpx

    from bitinglip.cli.cluster import _error_message

    # The server answers within `cluster.load_timeout_s` (ready, or 503 model_loading); this bounds a server that
    # stopped answering.
    timeout = httpx.Timeout(LOAD_REQUEST_TIMEOUT_S, connect=api.client.timeout.connect)
    while True:
        with api._reaching("POST", "/tokenize"):
            response = api.client.post("/tokenize", json={"model": model, "prompt": ""}, timeout=timeout)
        if response.status_code == 503 and _error_code(response) == "model_loading":
            time.sleep(LOAD_RETRY_S)  # still loading after the server's wait: ask again
            continue
        if response.is_error:
            raise BitingLipError(_error_message(response))
        return


def _error_code(response: Any) -> str | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


def _deployment(api: Api, model: str) -> tuple[dict[str, Any] | None, bool]:
    """The deployment's status (None before the server has made it), and whether this key may read it."""
    import httpx

    try:
        response = api.client.get(f"/api/deployments/{quote(model, safe='')}")
    except httpx.HTTPError:
        return None, True  # the load's own request reports a server that went away
    if response.status_code in (401, 403):
        return None, False
    return (response.json() if response.status_code == 200 else None), True


def _message(args: argparse.Namespace) -> str | None:
    """What to answer once: the text piped in, then PROMPT (as `ollama run` joins them); None for a conversation."""
    prompt = " ".join(args.prompt).strip()
    if sys.stdin is not None and sys.stdin.isatty():
        return prompt or None
    piped = sys.stdin.read().strip() if sys.stdin is not None else ""  # no stdin at all (a service): no text
    text = "\n\n".join(part for part in (piped, prompt) if part)
    if not text:
        raise BitingLipError("nothing to send: give a PROMPT, or pipe text in")
    return text


def _chat(args: argparse.Namespace) -> Chat:
    from bitinglip.cli.chat import Chat

    chat = Chat(args.model, system=args.system, keep_alive=args.keepalive)
    for assignment in args.parameter or []:
        name, sep, value = assignment.partition("=")
        if not sep:
            raise BitingLipError(f"--parameter takes NAME=VALUE, like temperature=0 (not {assignment!r})")
        chat.set_parameter(name.strip(), value.strip())
    return chat


def cmd_run(args: argparse.Namespace) -> int:
    from bitinglip.cli.cluster import Api, server_url

    chat = _chat(args)  # a bad --parameter fails before the server is asked
    text = _message(args)
    with Api(server_url(args)) as api:
        ensure_served(api, args.model)
        if text is None:
            from bitinglip.cli.repl import interactive
            from bitinglip.core import home_dir

            return interactive(api, chat, home_dir() / "run_history", verbose=args.verbose)
        reply = chat.send(api, text, sys.stdout)
    if reply.interrupted:
        raise KeyboardInterrupt
    if reply.text and not reply.text.endswith("\n"):
        print()
    if args.verbose:
        print(reply.stats(), file=sys.stderr)
    return 0


def _keep_alive(value: str) -> float | int | str:
    """300 and -1 travel as numbers (seconds), 5m/30s/1h as they are: the server parses durations."""
    from bitinglip.cli.cluster import _keep_alive_arg

    return _keep_alive_arg(value)


def add_commands(sub: Subcommands) -> None:
    from bitinglip.cli.cluster import _options

    url, _ = _options()
    run = sub.add_parser(
        "run",
        parents=[url],
        help="chat with a model of the running server (loads it if need be)",
        description="Chat with MODEL on the running server, as `ollama run` does: a conversation when no PROMPT is "
        "given and stdin is a terminal (/? lists its commands), else one answer to PROMPT (and the text piped "
        "in), printed alone on stdout. The model loads first if it is registered but not loaded. The key is "
        "$BITINGLIP_API_KEY.",
    )
    run.add_argument("model", metavar="MODEL", help="a model the server serves or has registered (GET /v1/models)")
    run.add_argument("prompt", nargs="*", metavar="PROMPT", help="answer this once and exit")
    run.add_argument("--system", metavar="TEXT", help="the system prompt (/set system in a conversation)")
    run.add_argument(
        "-p",
        "--parameter",
        action="append",
        metavar="NAME=VALUE",
        help="a sampling parameter, as /set parameter takes it: temperature=0, max_tokens=64, seed=1 (repeatable)",
    )
    run.add_argument(
        "--keepalive",
        type=_keep_alive,
        metavar="5m|300|-1",
        help="how long the model stays loaded after the last answer (seconds, or 30s/5m/1h; -1 forever)",
    )
    run.add_argument("--verbose", action="store_true", help="tokens and speed after each answer, on stderr")
    run.set_defaults(func=cmd_run, words_to="prompt")
