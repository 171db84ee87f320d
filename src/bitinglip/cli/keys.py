"""`bitinglip keys create | list | revoke`: API keys, on the database directly.

No server is needed, so the first admin key can be made before the server ever runs. A server already running
sees a new or revoked key within `gateway.key_cache_s`.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from bitinglip.cli.common import _with_components
from bitinglip.cli.tables import _fields, _json, _shorten, _table
from bitinglip.core import InvalidInput, parse_duration

if TYPE_CHECKING:  # the gateway comes with the app, imported when a command runs
    from bitinglip.app import Components
    from bitinglip.cli.common import Subcommands
    from bitinglip.gateway import KeyView

MODELS_WIDTH = 40
EXPIRES_HELP = (
    "a date (valid through that day, UTC: 2026-12-31), a date and time (UTC unless it names an offset: "
    "2026-12-31T18:00), or a duration from now (30d, 12h)"
)


def _utc(ts: float | None, never: str = "-") -> str:
    """Unix seconds as a UTC minute: key expiries and usage days are UTC, so their times are shown in UTC too."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M") if ts is not None else never


def _expires_at(value: str, now: float) -> float:
    """--expires as Unix seconds (see EXPIRES_HELP); InvalidInput if it is unreadable or not in the future."""
    at = _read_expiry(value, now)
    if at <= now:
        raise InvalidInput(f"--expires {value} is in the past (it would end {_utc(at)} UTC)", param="expires")
    return at


def _read_expiry(value: str, now: float) -> float:
    try:  # a bare date: the key works all that day, so it ends at the start of the next one
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        return (datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)).timestamp()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        pass
    else:
        return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
    try:
        return now + parse_duration(value, "expires")
    except InvalidInput:
        raise InvalidInput(f"--expires must be {EXPIRES_HELP}; got {value!r}", param="expires") from None


def _models(value: str | None) -> list[str] | None:
    """--models a,b as a list; left out: any model. An empty list is passed on for the store to refuse (it must
    not silently mean "any")."""
    if value is None:
        return None
    return [name.strip() for name in value.split(",") if name.strip()]


def _limit(value: int | None, none: str = "-") -> str:
    return str(value) if value is not None else none


def _allowed(models: list[str] | None) -> str:
    return ",".join(models) if models is not None else "any"


def _key_fields(info: KeyView) -> str:
    return _fields(
        [
            ("id", info.id),
            ("name", info.name),
            ("scope", info.scope),
            ("models", _allowed(info.models)),
            ("rpm", _limit(info.rpm, "no limit")),
            ("tpm", _limit(info.tpm, "no limit")),
            ("max concurrent", _limit(info.max_concurrent, "no limit")),
            ("expires", f"{_utc(info.expires_at)} UTC" if info.expires_at is not None else "never"),
        ]
    )


def _keys_table(keys: list[KeyView]) -> str:
    headers = (
        "ID",
        "NAME",
        "SCOPE",
        "MODELS",
        "RPM",
        "TPM",
        "MAX CONCURRENT",
        "EXPIRES (UTC)",
        "STATE",
        "CREATED (UTC)",
    )
    rows = [
        (
            k.id,
            k.name,
            k.scope,
            _shorten(_allowed(k.models), MODELS_WIDTH),
            _limit(k.rpm),
            _limit(k.tpm),
            _limit(k.max_concurrent),
            _utc(k.expires_at, never="never"),
            k.state,
            _utc(k.created_at),
        )
        for k in keys
    ]
    return _table(headers, rows)


async def _create(components: Components, args: argparse.Namespace) -> int:
    from bitinglip.gateway import KeyCreate

    spec = KeyCreate(
        name=args.name,
        scope=args.scope,
        models=_models(args.models),
        rpm=args.rpm,
        tpm=args.tpm,
        max_concurrent=args.max_concurrent,
        expires_at=_expires_at(args.expires, time.time()) if args.expires is not None else None,
    )
    new = await components.keys.create(spec)
    if args.json:
        print(_json(new))
        return 0
    # The key first and alone on its line, so `| head -1` gets it; only its hash is kept.
    print(new.key)
    print("^ the key: copy it now, it is not stored and will not be shown again")
    print()
    print(_key_fields(new.info))
    # A key works on the servers that use this database: say which, since a checkout's `make run` uses ./data.
    print(f"database: {components.db.url.partition(':///')[2] or components.db.url}")
    return 0


async def _list(components: Components, args: argparse.Namespace) -> int:
    from bitinglip.gateway import view

    keys = [view(k) for k in await components.keys.list(include_revoked=args.all)]
    if args.json:
        print(_json(keys))
        return 0
    if not keys:
        hidden = "" if args.all else " (revoked ones are shown with --all)"
        print(f"no keys{hidden}: `bitinglip keys create --name NAME` makes one")
        return 0
    print(_keys_table(keys))
    return 0


async def _revoke(components: Components, args: argparse.Namespace) -> int:
    asked_at = time.time()
    key = await components.keys.revoke(args.key)
    if key.revoked_at is not None and key.revoked_at < asked_at:  # by id, a key revoked before stays as it was
        print(f"{key.id} ({key.name}) was already revoked {_utc(key.revoked_at)} UTC")
        return 0
    print(f"revoked {key.id} ({key.name})")
    return 0


def add_commands(sub: Subcommands) -> None:
    keys = sub.add_parser("keys", help="API keys, on the database directly").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="make a key (shown once)")
    create.add_argument("--name", required=True, help="what the key is for, shown in lists (revoke takes it too)")
    create.add_argument("--scope", choices=["inference", "admin"], default="inference")
    create.add_argument("--models", metavar="A,B", help="the models it may use (default: any)")
    create.add_argument("--rpm", type=int, help="requests per minute (default: no limit)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: no limit)")
    create.add_argument("--max-concurrent", type=int, metavar="N", help="requests at once (default: no limit)")
    create.add_argument("--expires", metavar="WHEN", help=f"{EXPIRES_HELP} (default: never)")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=_with_components(_create))
    lst = keys.add_parser("list", help="list keys (never the keys themselves)")
    lst.add_argument("--all", action="store_true", help="revoked keys too")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_with_components(_list))
    revoke = keys.add_parser("revoke", help="revoke a key, by id or name")
    revoke.add_argument("key", metavar="ID_OR_NAME")
    revoke.set_defaults(func=_with_components(_revoke))
