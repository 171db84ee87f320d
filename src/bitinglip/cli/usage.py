"""`bitinglip usage`: requests, tokens and errors per UTC day, key and model, read from the database directly.

A running server writes its counts every `gateway.usage_flush_s`, so what it served in the last seconds may not
be there yet.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from bitinglip.cli.common import _with_components
from bitinglip.cli.tables import _json, _table
from bitinglip.core import Conflict, InvalidInput, NotFound

if TYPE_CHECKING:  # the gateway comes with the app, imported when a command runs
    from bitinglip.app import Components
    from bitinglip.cli.common import Subcommands
    from bitinglip.gateway import KeyStore, UsageReport, UsageRow

HEADERS = ("DAY", "KEY", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "ERRORS")
FIRST_NUMBER = 3  # the columns from here on are counts, aligned on the right


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{option} must be a date like 2026-11-24, got {value!r}", param=option) from None


def _period(args: argparse.Namespace) -> tuple[date, date | None]:
    """The first and last UTC day asked for: --since, else the last --days days (today included); --until or
    no end."""
    if args.days < 1:
        raise InvalidInput(f"--days must be at least 1, got {args.days}", param="days")
    today = datetime.now(UTC).date()
    start = _day(args.since, "--since") if args.since is not None else today - timedelta(days=args.days - 1)
    end = _day(args.until, "--until") if args.until is not None else None
    if end is not None and end < start:
        raise InvalidInput(f"--until {end} is before the first day asked for ({start})", param="until")
    return start, end


async def _key_id(keys: KeyStore, id_or_name: str) -> str:
    """--key by id or name, as `keys revoke` takes it, and also the name of a revoked key (its usage stays);
    an unknown key is an error, not an empty report."""
    try:
        return (await keys.find(id_or_name)).id
    except NotFound:
        named = [k.id for k in await keys.list(include_revoked=True) if k.name == id_or_name]
        if len(named) > 1:
            raise Conflict(
                f"{len(named)} revoked keys are named {id_or_name!r}; name one by its id", param="key"
            ) from None
        if not named:
            raise
        return named[0]


def _key(key_id: str, names: dict[str, str]) -> str:
    if not key_id:
        return "-"  # served without a key (auth off)
    return f"{key_id} ({names[key_id]})" if key_id in names else key_id


def _counts(row: UsageRow) -> list[str]:
    return [f"{n:,}" for n in (row.requests, row.prompt_tokens, row.completion_tokens, row.errors)]


def _usage_table(report: UsageReport, names: dict[str, str]) -> str:
    rows = [[r.day, _key(r.key_id, names), r.model, *_counts(r)] for r in report.data]
    rows.append(["total", "", "", *_counts(report.total)])
    # _table pads on the right; counts padded here first to their column's width read right-aligned.
    for column in range(FIRST_NUMBER, len(HEADERS)):
        width = max(len(HEADERS[column]), *(len(row[column]) for row in rows))
        for row in rows:
            row[column] = row[column].rjust(width)
    return _table(HEADERS, rows)


async def _usage(components: Components, args: argparse.Namespace) -> int:
    start, end = _period(args)
    key_id = await _key_id(components.keys, args.key) if args.key is not None else None
    report = await components.usage.report(key_id=key_id, model=args.only_model, start=start, end=end)
    if args.json:
        print(_json(report))
        return 0
    if not report.data:
        print(f"no usage from {start} to {end or 'today'} (UTC days)")
        return 0
    names = {k.id: k.name for k in await components.keys.list(include_revoked=True)}
    print(_usage_table(report, names))
    return 0


def add_commands(sub: Subcommands) -> None:
    usage = sub.add_parser("usage", help="requests and tokens per UTC day, key and model (on the database directly)")
    usage.add_argument("--key", metavar="ID_OR_NAME", help="one key's usage")
    # Not `model`: that name is the command line's override of cluster.model (common._overrides).
    usage.add_argument("--model", dest="only_model", metavar="MODEL", help="one model's usage")
    usage.add_argument("--days", type=int, default=7, help="the last N UTC days, today included (default: 7)")
    usage.add_argument("--since", metavar="DATE", help="from this UTC day (instead of --days)")
    usage.add_argument("--until", metavar="DATE", help="up to this UTC day, included (default: today)")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=_with_components(_usage))
