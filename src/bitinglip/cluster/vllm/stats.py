"""A vLLM stat logger that writes each step's numbers into the engine's `EngineStats`."""

from __future__ import annotations

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


def quiet_iteration_stats(llm: Any) -> bool:
    """Stop vLLM's per-token statistics in this process; the engine core's per-step numbers still come.

    With statistics on, vLLM's output handler fills an `IterationStats` on every step: per generated token of
    every request, timings and counts for its own Prometheus metrics (TTFT, inter-token latency, a histogram of
    tokens per request), which BitingLip does not export (`no_prometheus_logger`). That was about 5% of the API
    process's CPU under streaming load. The scheduler's numbers (running, waiting, KV cache use) are made in the
    engine core and still reach `stat_logger_factory`'s recorder; the engine counts its generated tokens itself.

    vLLM 0.32's handler reads the flag once, when it starts (at the first request): called before that, it
    takes. Where a release lacks these attributes, or the handler runs already, nothing changes (False).
    """
    processor: Any = getattr(llm, "output_processor", None)
    started = getattr(llm, "output_handler", True) is not None
    if started or not hasattr(processor, "log_stats") or not hasattr(llm, "log_stats"):
        return False
    llm.log_stats = False  # read by the output handler when it starts: no IterationStats per step
    processor.log_stats = False  # no per-request RequestStateStats for requests added from now on
    return True


def no_prometheus_logger() -> Any:
    """A stand-in for vLLM's Prometheus stat logger that records nothing.

    vLLM adds its own Prometheus logger to every engine unless one is given. BitingLip exports its own metrics
    (several engines in one process would unregister each other's `vllm:*` ones anyway), and vLLM's costs about 5%
    of the API process's CPU under streaming load: three histogram observations and four counter increments per
    generated token. Passing this one (a subclass, so vLLM counts it as given) keeps vLLM's out.
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
