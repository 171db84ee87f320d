"""Keep what the server holds for good out of Python's full garbage collections.

An engine brings vLLM, torch and a tokenizer into the API process: about 700,000 objects the cyclic collector
tracks. Python runs a full collection once the objects that survived since the last one reach a quarter of that
heap, and each one walks all of it: measured at 400 ms of the event loop's CPU, once or twice per thousand
streamed requests at 256 at once (a fifth of the API process's CPU there, and a 400 ms stall for every client).
Freezing the heap once the engines are up leaves the collector only what requests make, as vLLM's engine core
does for its own process. And the youngest generation is collected every 10,000 new objects rather than 700:
most of what a request makes is freed by its reference count long before that, and the API process's CPU per
streamed token fell by 5-25% (64 and 256 at once).
"""

from __future__ import annotations

import gc
import time

from bitinglip.core.logging import get_logger

log = get_logger(__name__)
YOUNG_THRESHOLD = 10_000  # new objects between collections of the youngest generation (Python's default: 700)


def settle(*, collect: bool) -> None:
    """Engines came (``collect=False``: freeze what is there now, at once) or went (``collect=True``: a full
    collection first, so what a removed engine left in cycles is freed, then the freeze: one ~400 ms pause of the
    event loop, when an engine is put away or removed, instead of one every few hundred requests)."""
    began = time.perf_counter()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    collected = 0
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
