"""The two per-request savings set on a started vLLM engine: no per-token statistics in the API process, and the
EOS id looked up once. The stand-ins have the shape of vLLM 0.32's `AsyncLLM` (`log_stats`, `output_handler`,
`output_processor.log_stats`, `renderer.get_eos_token_id`); the real engine runs both in every e2e test.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bitinglip.cluster.vllm.stats import quiet_iteration_stats
from bitinglip.cluster.vllm.tokens import fix_eos_lookup


def _llm(handler: Any = None) -> Any:
    return SimpleNamespace(log_stats=True, output_handler=handler, output_processor=SimpleNamespace(log_stats=True))


def test_statistics_are_quieted_before_the_output_handler_starts() -> None:
    llm = _llm()
    assert quiet_iteration_stats(llm) is True
    assert (llm.log_stats, llm.output_processor.log_stats) == (False, False)


def test_a_running_output_handler_is_left_as_it_is() -> None:
    """It read the flag when it started: quieting the processor alone would break its per-request statistics."""
    llm = _llm(handler=object())
    assert quiet_iteration_stats(llm) is False
    assert (llm.log_stats, llm.output_processor.log_stats) == (True, True)


def test_a_release_without_the_attributes_is_left_alone() -> None:
    llm = SimpleNamespace(output_handler=None, output_processor=SimpleNamespace())
    assert quiet_iteration_stats(llm) is False
    assert not hasattr(llm, "log_stats")


class _Renderer:
    def __init__(self, eos: Any) -> None:
        self.tokenizer = object()
        self.eos = eos
        self.lookups = 0

    def get_eos_token_id(self) -> Any:
        self.lookups += 1
        return self.eos


def test_the_eos_id_is_looked_up_once() -> None:
    renderer = _Renderer(eos=3)
    llm = SimpleNamespace(renderer=renderer)
    assert fix_eos_lookup(llm) is True
    assert [renderer.get_eos_token_id() for _ in range(5)] == [3] * 5
    assert renderer.lookups == 1


def test_an_odd_eos_or_no_tokenizer_keeps_the_lookup() -> None:
    odd = _Renderer(eos=[3, 4])
    assert fix_eos_lookup(SimpleNamespace(renderer=odd)) is False
    odd.get_eos_token_id()
    assert odd.lookups == 2  # still the class's method
    bare = _Renderer(eos=3)
    bare.tokenizer = None
    assert fix_eos_lookup(SimpleNamespace(renderer=bare)) is False
    assert fix_eos_lookup(SimpleNamespace()) is False
