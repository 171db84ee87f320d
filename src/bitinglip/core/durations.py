"""Durations as people write them in settings and requests: 300, "300", "30s", "5m", "1h", "7d"."""

from __future__ import annotations

import re

from bitinglip.core.errors import InvalidInput

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: float | str, field: str) -> float:
    """Seconds (negative allowed: callers give it a meaning); InvalidInput naming ``field`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if match is None:
        raise InvalidInput(f"{field} must be seconds or a duration like 30s, 5m, 1h, 1d; got {value!r}", param=field)
    return float(match[1]) * _UNIT_S[match[2]]
