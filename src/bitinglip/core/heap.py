"""Keep what the server holds for good out of Python's full garbage collections.

An engine brings vLLM, torch and a tokenizer into the API process: about 700,000 objects the cyclic collector
tracks. Python runs a full collection once the objects that survived since the last one reach a quarter of that
heap, and each one walks all of it: measured at 400 ms of the event loop's CPU, once or twice per thousand
streamed requests at 256 at once (a fifth of the API process's CPU there, and a 400 ms stall for every client).
Freezing the heap once the engines are up leaves the collector only what requests make, as vLLM's engine core
does for its own process.

The youngest generation is collected every 2,000 new objects instead of Python's 700. A streamed request's
objects live for the whole stream, so at 700 most of them were still alive when looked at, and were looked at
again in the middle generation: over 1,280 streamed requests at 64 and 256 at once the collector's time went from
105-134 ms to 63-80 ms with 2,000, and its longest pause from 19-32 ms to 10-14 ms. At 10,000 the middle generation's
passes walked up to 100,000 objects and stalled the loop for 80 ms (503 refusals in a flood took 100 ms).
"""

from __future__ import annotations

import gc
import time

from bitinglip.core.logging import get_logger

log = get_logger(__name__)

YOUNG = 2000  # new objects between collections of the youngest generation (Python's default is 700)


def settle(*, collect: bool) -> None:
    """Engines came (``collect=False``: freeze what is there now, at once) or went (``collect=True``: a full
    collection first, so what a removed engine left in cycles is freed, then the freeze: one ~400 ms pause of the
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
