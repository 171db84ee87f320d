"""A vLLM stat logger that writes each step's numbers into the engine's `EngineStats`."""

from __future__ import annotations

import functools
import time
from typing import Any

from bitinglip.cluster.stats import EngineStats


def stat_logger_factory(stats: EngineStats) -> Any:
    """A vLLM `StatLoggerBase` class that writes each step's scheduler numbers into ``stats``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Recorder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        # The signature of record() changed across releases; take whatever comes.
        def record(self, scheduler_stats: Any = None, iteration_stats: Any = None, *args: Any, **kwargs: Any) -> None:
            if scheduler_stats is not None:
                stats.running = scheduler_stats.num_running_reqs
                stats.waiting = scheduler_stats.num_waiting_reqs
                stats.kv_cache_usage = scheduler_stats.kv_cache_usage
                stats.updated_at = time.monotonic()

        def log_engine_initialized(self) -> None:
            pass

    return _Recorder


@functools.cache  # one class: the start-up check (hooks.py) knows it by identity
def no_prometheus_logger() -> Any:
    """A stand-in for vLLM's Prometheus stat logger that records nothing.

    vLLM adds its own Prometheus logger to every engine unless one is given. BitingLip exports its own metrics
    (several engines in one process would unregister each other's `vllm:*` ones anyway), and vLLM's makes three
    histogram observations and four counter increments per generated token in the API process. Passing this one
    (a subclass, so vLLM counts it as given) keeps vLLM's out.
    """
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    class _NoPrometheus(PrometheusStatLogger):
        def __init__(self, vllm_config: Any, engine_indexes: Any = None) -> None:  # registers no metric
            pass

        def record(self, *args: Any, **kwargs: Any) -> None:
            pass

        def record_sleep_state(self, *args: Any, **kwargs: Any) -> None:
            pass

        def record_admission_rejection(self, *args: Any, **kwargs: Any) -> None:
            pass

        def log(self) -> None:
            pass

        def log_engine_initialized(self) -> None:
            pass

    return _NoPrometheus
