"""Keep what the server holds for good out of Python's full garbage collections.

An engine brings vLLM, torch and a tokenizer into the API process: about 700,000 objects the cyclic collector
tracks. Python runs a full collection once the objects that survived since the last one reach a quarter of that
heap, and each one walks all of it: measured at 400 ms of the event loop's CPU, once or twice per thousand
streamed requests at 256 at once (a fifth of the API process's CPU there, and a 400 ms stall for every client).
Freezing the heap once the engines are up leaves the collector only what requests make, as vLLM's engine core
does for its own process. Python's thresholds for the younger generations stay as they are: collecting the
youngest every 10,000 new objects instead of 700 saved CPU per token, but its middle-generation passes then
walked up to 100,000 objects and stalled the loop for 80 ms (503 refusals in a flood took 100 ms, not 25).
"""

from __future__ import annotations

import gc
import time

from bitinglip.core.logging import get_logger

log = get_logger(__name__)


def settle(*, collect: bool) -> None:
    """Engines came (``collect=False``: freeze what is there now, at once) or went (``collect=True``: a full
    collection first, so what a removed engine left in cycles is freed, then the freeze: one ~400 ms pause of the
    event loop, when an engine is put away or removed, instead of one every few hundred requests)."""
    began = time.perf_counter()
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
