"""`bitinglip batches submit | list | show | cancel`: OpenAI batches on a running server (/v1/files and
/v1/batches), over HTTP, with what cli/cluster.py shares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bitinglip.cli.cluster import Api, _options, _poll, server_url
from bitinglip.cli.tables import (
    ACTIVE_BATCH,
    _batch_errors,
    _batch_fields,
    _batch_progress,
    _batches_table,
    _counts,
    _print_json,
)
from bitinglip.core import BitingLipError

if TYPE_CHECKING:
    from bitinglip.cli.common import Subcommands


def _path(batch_id: str) -> str:
    return f"/v1/batches/{quote(batch_id, safe='')}"


def _metadata_arg(value: str) -> tuple[str, str]:
    key, sep, text = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"KEY=VALUE, like project=demo (not {value!r})")
    return key.strip(), text


def _upload(api: Api, source: Path) -> dict[str, Any]:
    """``source`` as a file of purpose batch, streamed from disk."""
    try:
        with source.open("rb") as file:
            form = {"file": (source.name, file, "application/jsonl")}
            return api.request("POST", "/v1/files", files=form, data={"purpose": "batch"})  # type: ignore[no-any-return]
    except OSError as exc:
        raise BitingLipError(f"cannot read {source}: {exc.strerror or exc}") from exc


def _download(api: Api, file_id: str, dest: Path) -> None:
    """A file's content streamed to ``dest``, through DEST.part: a broken download leaves no half file behind."""
    part = dest.with_name(dest.name + ".part")
    try:
        with api.stream("GET", f"/v1/files/{quote(file_id, safe='')}/content") as response, part.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
        part.replace(dest)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise BitingLipError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _wait(api: Api, batch: dict[str, Any]) -> dict[str, Any]:
    """Poll the batch until it has ended, showing its progress; Ctrl-C stops waiting, not the batch."""
    batch_id = batch["id"]
    bar = sys.stderr.isatty()

    def step(current: dict[str, Any], elapsed: float) -> str | None:
        return _batch_progress(current, elapsed, bar) if current["status"] in ACTIVE_BATCH else None

    try:
        return _poll(api, _path(batch_id), step)  # type: ignore[no-any-return]
    except KeyboardInterrupt:
        print(
            f"stopped waiting: {batch_id} goes on on the server; `bitinglip batches show {batch_id}` follows it, "
            f"`bitinglip batches cancel {batch_id}` stops it",
            file=sys.stderr,
        )
        raise


def _refused(batch: dict[str, Any], source: Path) -> str:
    errors = _batch_errors(batch)
    if not errors:
        return f"{batch['id']} failed"
    return f"{batch['id']} failed: {source.name} has {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors)


def _save(api: Api, batch: dict[str, Any], source: Path, args: argparse.Namespace) -> list[str]:
    """The batch's output and error files, downloaded (by default next to ``source``); where they went."""
    saved = []
    for key, given, name in (("output_file_id", args.output, "output"), ("error_file_id", args.errors, "errors")):
        if batch.get(key):
            dest = Path(given) if given else source.with_name(f"{source.stem}.{name}.jsonl")
            _download(api, batch[key], dest)
            saved.append(f"{name} in {dest}")
    return saved


def cmd_submit(args: argparse.Namespace) -> int:
    source = Path(args.file)
    if not source.is_file():
        raise BitingLipError(f"no file {source}")
    body: dict[str, Any] = {"endpoint": args.endpoint, "completion_window": args.window}
    if args.metadata:
        body["metadata"] = dict(args.metadata)
    if args.priority is not None:
        body["priority"] = args.priority
    with Api(server_url(args)) as api:
        upload = _upload(api, source)
        batch = api.request("POST", "/v1/batches", {"input_file_id": upload["id"], **body})
        if args.wait and batch["status"] in ACTIVE_BATCH:
            batch = _wait(api, batch)
        if args.json:
            _print_json(batch)
        if batch["status"] == "failed":
            raise BitingLipError(_refused(batch, source))
        if not args.wait:
            if not args.json:
                total = _counts(batch)[1]
                print(f"{batch['id']} {batch['status']}" + (f" ({total} requests)" if total else ""))
            return 0
        saved = _save(api, batch, source, args)
    done, total, failed = _counts(batch)
    summary = f"{batch['id']} {batch['status']}: {done - failed}/{total} succeeded, {failed} failed; "
    print(summary + ("; ".join(saved) or "no output file"), file=sys.stderr if args.json else sys.stdout)
    return 0 if batch["status"] == "completed" else 1


def cmd_list(args: argparse.Namespace) -> int:
    with Api(server_url(args)) as api:
        page = api.request("GET", "/v1/batches", params={"limit": args.limit} if args.limit else None)
    batches = page["data"]
    if args.json:
        _print_json(batches)
    elif not batches:
        print("no batches: `bitinglip batches submit FILE` runs one")
    else:
        print(_batches_table(batches))
    if page.get("has_more"):
        print(f"… and more: --limit {2 * len(batches)} shows more", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with Api(server_url(args)) as api:
        batch = api.request("GET", _path(args.id))
    if args.json:
        _print_json(batch)
    else:
        print(_batch_fields(batch))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with Api(server_url(args)) as api:
        batch = api.request("POST", f"{_path(args.id)}/cancel")
    if args.json:
        _print_json(batch)
    else:
        print(f"{batch['id']} {batch['status']}")
    return 0


def add_commands(sub: Subcommands) -> None:
    url, as_json = _options()
    batches = sub.add_parser(
        "batches", help="OpenAI batches: a file of requests run in the background, results in a file"
    ).add_subparsers(dest="action", required=True)

    submit = batches.add_parser(
        "submit",
        parents=[url, as_json],
        help="upload a JSONL file of requests and run it as a batch",
        description="Upload FILE (OpenAI's batch input: one request a line) and run it as a batch. With --wait, "
        "show its progress and download its output and error files when it ends (exit 1 unless completed).",
    )
    submit.add_argument("file", metavar="FILE", help="the input, JSON lines with custom_id, method, url and body")
    submit.add_argument(
        "--endpoint", default="/v1/chat/completions", help="what every line calls: %(default)s or /v1/completions"
    )
    submit.add_argument("--window", default="24h", metavar="24h", help="its completion window (default %(default)s)")
    submit.add_argument(
        "--metadata",
        type=_metadata_arg,
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="labels kept with the batch (repeatable)",
    )
    submit.add_argument("--priority", type=int, metavar="P", help="higher runs first (default 0)")
    submit.add_argument("--wait", action="store_true", help="show its progress until it ends, then download")
    submit.add_argument(
        "--output", metavar="OUT.jsonl", help="where --wait writes the output (default FILE.output.jsonl)"
    )
    submit.add_argument("--errors", metavar="ERR.jsonl", help="where --wait writes failed lines (FILE.errors.jsonl)")
    submit.set_defaults(func=cmd_submit)

    listing = batches.add_parser("list", parents=[url, as_json], help="batches, newest first")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N (default: the server's, 20)")
    listing.set_defaults(func=cmd_list)

    show = batches.add_parser("show", parents=[url, as_json], help="one batch: progress, files, errors")
    show.add_argument("id", metavar="ID")
    show.set_defaults(func=cmd_show)

    cancel = batches.add_parser("cancel", parents=[url, as_json], help="cancel a batch (its output keeps what ran)")
    cancel.add_argument("id", metavar="ID")
    cancel.set_defaults(func=cmd_cancel)
