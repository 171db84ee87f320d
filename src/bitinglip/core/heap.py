"""Keep what the server holds for good out of Python's full garbage collections.

An engine brings vLLM, torch and a tokenizer into the API process: hundreds of thousands of objects the cyclic
collector tracks. Python runs a full collection once the objects that survived since the last one reach a quarter
of that heap, and each one walks all of it, stalling every client for as long (docs/performance.md has the
figures).
Freezing the heap once the engines are up leaves the collector only what requests make, as vLLM's engine core
does for its own process.

The youngest generation is collected every 2,000 new objects instead of Python's 700. A streamed request's
objects live for the whole stream, so at 700 most of them were still alive when looked at, and were looked at
again in the middle generation; 2,000 cut the collector's time and its longest pause, while 10,000 made the middle
generation's passes long enough to stall the loop (docs/performance.md).
"""

from __future__ import annotations

import gc
import time

from bitinglip.core.logging import get_logger

log = get_logger(__name__)

YOUNG = 2000  # new objects between collections of the youngest generation (Python's default is 700)


def settle(*, collect: bool) -> None:
    """Engines came (``collect=False``: freeze what is there now, at once) or went (``collect=True``: a full
    collection first, so what a removed engine left in cycles is freed, then the freeze: one long pause of the
    event loop, when an engine is put away or removed, instead of one every few hundred requests)."""
    began = time.perf_counter()
    collected = 0
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
    if collect:
        gc.unfreeze()
        collected = gc.collect()
    gc.freeze()
    log.info(
        "heap.frozen",
        objects=gc.get_freeze_count(),
        collected=collected,
        ms=round((time.perf_counter() - began) * 1000, 1),
    )
