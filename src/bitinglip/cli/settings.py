"""`bitinglip settings show`: every effective setting and the layer it came from."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitinglip.cli.common import Subcommands


def cmd_settings_show(args: argparse.Namespace) -> int:
    import msgspec

    from bitinglip.core import describe, is_secret, load_settings

    loaded = load_settings()
    rows = describe(loaded)
    if args.json:
        # describe() gives JSON-encoded values, except secrets, which it has masked into plain text.
        shown = [
            {"key": k, "value": v if is_secret(k) else msgspec.json.decode(v), "layer": layer} for k, v, layer in rows
        ]
        print(msgspec.json.encode(shown).decode())
        return 0
    width = max(len(k) for k, _, _ in rows)
    vwidth = min(max(len(v) for _, v, _ in rows), 60)
    for key, value, layer in rows:
        print(f"{key:<{width}}  {value:<{vwidth}}  {layer}")
    return 0


def add_commands(sub: Subcommands) -> None:
    settings = sub.add_parser("settings", help="inspect settings").add_subparsers(dest="action", required=True)
    show = settings.add_parser("show", help="every effective value and the layer it came from (secrets masked)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_settings_show)
