"""`bitinglip tasks submit | list | show | cancel`: chat and completion requests run in the background by a
running server's task queue (/api/tasks), over HTTP, with what cli/cluster.py shares.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bitinglip.cli.cluster import Api, _options, _poll, server_url
from bitinglip.cli.tables import (
    FINAL_TASK,
    _elapsed,
    _print_json,
    _task_error,
    _task_fields,
    _task_result,
    _task_summary,
    _tasks_table,
)
from bitinglip.core import BitingLipError

if TYPE_CHECKING:
    from bitinglip.cli.common import Subcommands

TASK_STATES = ("queued", "running", *FINAL_TASK)


def _path(task_id: str) -> str:
    return f"/api/tasks/{quote(task_id, safe='')}"


def _read_request(source: str) -> dict[str, Any]:
    """The JSON request body in a file, or on stdin for "-"."""
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise BitingLipError(f"cannot read {name}: {exc.strerror or exc}") from exc
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise BitingLipError(f"{name} is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BitingLipError(f"{name} holds a JSON {type(body).__name__}; a request body is a JSON object")
    return body


def _submission(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /api/tasks body: the request from --file or --prompt, with --model and --max-tokens over it."""
    if args.file is not None:
        request = _read_request(args.file)
    elif args.kind == "chat":
        request = {"messages": [{"role": "user", "content": args.text}]}
    else:
        request = {"prompt": args.text}
    if args.model is not None:
        request["model"] = args.model
    if args.max_tokens is not None:
        request["max_tokens"] = args.max_tokens
    if not request.get("model"):
        raise BitingLipError("which model? --model NAME (or a `model` in the --file body)")
    body: dict[str, Any] = {"kind": args.kind, "request": request}
    for key, value in (("priority", args.priority), ("idempotency_key", args.key), ("max_attempts", args.max_attempts)):
        if value is not None:
            body[key] = value
    return body


def _wait(api: Api, task: dict[str, Any]) -> dict[str, Any]:
    """Poll the task until it has ended; Ctrl-C stops waiting, not the task."""
    task_id = task["id"]

    def step(current: dict[str, Any], elapsed: float) -> str | None:
        return None if current["state"] in FINAL_TASK else f"{task_id} {current['state']} … {_elapsed(elapsed)}"

    try:
        return _poll(api, _path(task_id), step)  # type: ignore[no-any-return]
    except KeyboardInterrupt:
        print(
            f"stopped waiting: {task_id} goes on on the server; `bitinglip tasks show {task_id}` shows it, "
            f"`bitinglip tasks cancel {task_id}` stops it",
            file=sys.stderr,
        )
        raise


def cmd_submit(args: argparse.Namespace) -> int:
    body = _submission(args)  # a bad --file fails before the server is asked
    with Api(server_url(args)) as api:
        task = api.request("POST", "/api/tasks", body)
        if args.wait and task["state"] not in FINAL_TASK:
            task = _wait(api, task)
    if args.json:
        _print_json(task)
    if not args.wait:
        if not args.json:
            print(f"{task['id']} {task['state']}")
        return 0
    if task["state"] != "succeeded":
        raise BitingLipError(_task_error(task))
    if not args.json:
        # The text alone on stdout (what a script reads); which task and what it cost beside it, on stderr.
        print(_task_result(task))
        print(_task_summary(task), file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    query = {"state": args.state, "batch_id": args.batch, "limit": args.limit}
    params: dict[str, Any] = {k: v for k, v in query.items() if v is not None}
    tasks: list[dict[str, Any]] = []
    with Api(server_url(args)) as api:
        while True:
            page = api.request("GET", "/api/tasks", params=params)
            tasks += page["data"]
            more = bool(page.get("has_more") and page.get("next_cursor"))
            if not (more and args.all):
                break
            params["after"] = page["next_cursor"]
    if args.json:
        _print_json(tasks)
    elif not tasks:
        print("no tasks" + (f" {args.state}" if args.state else "") + ": `bitinglip tasks submit` runs one")
    else:
        print(_tasks_table(tasks, time.time()))
    if more:
        print("… and more: --all lists them all", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with Api(server_url(args)) as api:
        task = api.request("GET", _path(args.id))
    if args.json:
        _print_json(task)
    elif task["state"] == "succeeded":
        print(f"{_task_fields(task)}\n\n{_task_result(task)}")
    else:
        print(_task_fields(task) + (f"\n\n{_task_error(task)}" if task["state"] in FINAL_TASK else ""))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with Api(server_url(args)) as api:
        task = api.request("POST", f"{_path(args.id)}/cancel")
    if args.json:
        _print_json(task)
    else:
        print(f"{task['id']} {task['state']}")
    return 0


def add_commands(sub: Subcommands) -> None:
    url, as_json = _options()
    tasks = sub.add_parser(
        "tasks", help="chat and completion requests run in the background by the server's queue"
    ).add_subparsers(dest="action", required=True)

    submit = tasks.add_parser(
        "submit",
        parents=[url, as_json],
        help="queue one request; --wait prints its result",
        description="Queue a chat or completion request on the running server. With --wait, print the generated "
        "text once it has run on stdout, and its task id and tokens on stderr (exit 1 if it failed; --json prints "
        "the whole task).",
    )
    submit.add_argument("--kind", choices=("chat", "completion"), default="chat", help="default %(default)s")
    submit.add_argument("--model", metavar="M", help="the deployed model (or the `model` in the --file body)")
    given = submit.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt", "--message", dest="text", metavar="TEXT", help="the user message or the prompt")
    given.add_argument(
        "--file",
        metavar="REQUEST.json",
        help="the request body as /v1/chat/completions or /v1/completions take it (- reads stdin)",
    )
    submit.add_argument("--max-tokens", type=int, metavar="N", help="at most N tokens generated")
    submit.add_argument("--priority", type=int, metavar="P", help="higher runs first (default 0)")
    submit.add_argument("--key", metavar="KEY", help="an idempotency key: sent again, it returns the same task")
    submit.add_argument("--max-attempts", type=int, metavar="N", help="tries before it fails (default: the server's)")
    submit.add_argument(
        "--wait", action="store_true", help="wait until it has run; print its text (stdout), its id and tokens (stderr)"
    )
    submit.set_defaults(func=cmd_submit)

    listing = tasks.add_parser("list", parents=[url, as_json], help="tasks, newest first")
    listing.add_argument("--state", choices=TASK_STATES, help="only tasks in this state")
    listing.add_argument("--batch", metavar="BATCH_ID", help="only the lines of this batch")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N (a page; default: the server's, 50)")
    listing.add_argument("--all", action="store_true", help="every page, not only the first")
    listing.set_defaults(func=cmd_list)

    show = tasks.add_parser("show", parents=[url, as_json], help="one task, with its result or error")
    show.add_argument("id", metavar="ID")
    show.set_defaults(func=cmd_show)

    cancel = tasks.add_parser("cancel", parents=[url, as_json], help="cancel a task (a running one is aborted)")
    cancel.add_argument("id", metavar="ID")
    cancel.set_defaults(func=cmd_cancel)
