"""An engine's latest per-step numbers (running, waiting, KV cache use, tokens made, time of the last step)."""

from __future__ import annotations

import time


class EngineStats:
    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.tokens_generated = 0
        self.updated_at = 0.0  # monotonic time of the last engine step
        self.busy_since = time.monotonic()  # last time the engine had nothing to do (stall watch)
