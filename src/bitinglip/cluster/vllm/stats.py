"""The engine's latest per-step numbers, fed by a vLLM stat logger (running, waiting, KV cache use, last step)."""

from __future__ import annotations

import time
from typing import Any


class EngineStats:
    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.updated_at = 0.0  # monotonic time of the last engine step
        self.busy_since = time.monotonic()  # last time the engine had nothing to do (stall watch)


def stat_logger_factory(stats: EngineStats) -> Any:
    """A vLLM `StatLoggerBase` class that writes each step's scheduler numbers into ``stats``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Recorder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        # The signature of record() changed across releases; take whatever comes.
        def record(self, scheduler_stats: Any = None, *args: Any, **kwargs: Any) -> None:
            if scheduler_stats is not None:
                stats.running = scheduler_stats.num_running_reqs
                stats.waiting = scheduler_stats.num_waiting_reqs
                stats.kv_cache_usage = scheduler_stats.kv_cache_usage
                stats.updated_at = time.monotonic()

        def log_engine_initialized(self) -> None:
            pass

    return _Recorder
