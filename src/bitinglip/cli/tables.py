"""How `bitinglip ps` and `bitinglip cluster devices` show what the server answers: plain tables for a terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from bitinglip.cli.common import _size

REASON_WIDTH = 48


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [headers, *rows]
    ]
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())  # a traceback's lines on one line
    return text if len(text) <= width else text[: width - 1] + "…"


def _elapsed(seconds: float) -> str:
    """12s, 3m05s, 5m, 1h02m."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s % 3600 // 60 else f"{s // 3600}h"


def _from_now(seconds: float) -> str:
    """4 minutes from now, as `ollama ps` says it."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} from now"
    return "now"


def _state(d: dict[str, Any]) -> str:
    state = str(d.get("state") or "-")
    if state == "loading" and d.get("loading_for_s") is not None:
        return f"loading {_elapsed(d['loading_for_s'])}"
    if state in ("failed", "stopped") and d.get("reason"):
        return _shorten(f"{state}: {d['reason']}", REASON_WIDTH)
    return state


def _devices(d: dict[str, Any]) -> str:
    kind = str(d.get("device_kind") or "-")
    indices = d.get("devices") or []
    return f"{kind} {','.join(str(i) for i in indices)}" if kind == "gpu" and indices else kind


def _memory(d: dict[str, Any]) -> str:
    memory = d.get("memory") or {}
    if memory.get("held_bytes") is not None:
        return _size(memory["held_bytes"])
    estimate = memory.get("estimate_bytes")
    return f"~{_size(estimate)}" if estimate else "-"  # not measured yet: the estimate it was placed with


def _until(d: dict[str, Any]) -> str:
    if d.get("state") != "ready":
        return "-"
    if d.get("keep_alive_s") is None:
        return "forever"
    if d.get("unloads_in_s") is None:
        return "-"  # in use: the countdown starts when its last request ends
    return _from_now(max(0.0, float(d["unloads_in_s"])))


def _deployments_table(deployments: list[dict[str, Any]]) -> str:
    headers = ("NAME", "MODEL", "STATE", "DEVICES", "MEMORY", "IN-FLIGHT", "UNTIL")
    rows = [
        (
            str(d.get("name")),
            str(d.get("model")),
            _state(d),
            _devices(d),
            _memory(d),
            str((d.get("stats") or {}).get("in_flight", 0)),
            _until(d),
        )
        for d in deployments
    ]
    return _table(headers, rows)


def _devices_table(devices: list[dict[str, Any]]) -> str:
    headers = ("INDEX", "KIND", "NAME", "UUID", "MEMORY", "FREE", "UTIL", "TEMP")
    rows = []
    for d in devices:
        uuid = d.get("uuid")
        util, temp = d.get("utilization_percent"), d.get("temperature_c")
        rows.append(
            (
                str(d.get("index", "-")),
                str(d.get("kind", "-")),
                str(d.get("name", "-")),
                _shorten(uuid, 13) if uuid else "-",
                f"{_size(d.get('memory_used_bytes'))} / {_size(d.get('memory_total_bytes'))}",
                _size(d.get("memory_free_bytes")),
                f"{util:.0f}%" if util is not None else "-",
                f"{temp}°C" if temp is not None else "-",
            )
        )
    return _table(headers, rows)


def _print_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode())
