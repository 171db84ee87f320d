"""How many background runs a target takes at once after its engine refused one as overloaded.

The queue's room for a target is its engines' slots (and a quarter more). An engine also bounds the prompt tokens
waiting in it, and long prompts reach that bound first: the engine refuses the run at once (`overloaded`). The
queue then sends fewer, the way TCP paces a connection: the first refusal after a success halves what is in
flight, another before any success brings it down to the others in flight, each run that succeeds raises the
ceiling by one over its size (one more per ceiling's worth of runs), and a target with no refusal for
`FORGET_S` has its ceiling dropped (prompts change from batch to batch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

FORGET_S = 30.0


@dataclass
class _Window:
    ceiling: float
    refused_at: float
    cut: bool = True  # cut since the last success: a burst of refusals halves it once


class Pace:
    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def ceiling(self, target: str) -> int | None:
        """At most this many in flight on ``target``; None: no bound but its room."""
        window = self._windows.get(target)
        if window is None:
            return None
        if time.monotonic() - window.refused_at > FORGET_S:
            del self._windows[target]
            return None
        return int(window.ceiling)

    def refused(self, target: str, in_flight: int) -> None:
        """The engine refused a run as overloaded, with ``in_flight`` runs of this queue on it (that one included)."""
        now = time.monotonic()
        window = self._windows.get(target)
        if window is None:
            self._windows[target] = _Window(max(1.0, in_flight / 2), now)
            return
        window.refused_at = now
        if not window.cut:
            window.ceiling, window.cut = max(1.0, min(window.ceiling, in_flight) / 2), True
        else:  # refused again before any run succeeded: the others in flight are at least all it takes now
            window.ceiling = max(1.0, min(window.ceiling, in_flight - 1))

    def succeeded(self, target: str) -> None:
        window = self._windows.get(target)
        if window is not None:
            window.ceiling += 1 / window.ceiling
            window.cut = False
