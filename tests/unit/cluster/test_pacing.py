"""Pacing: a streamed request's interval in vLLM's output processor, moved while it streams.

The stand-ins have the shape of vLLM 0.32's `OutputProcessor` (`external_req_ids`, `request_states`) and
`RequestState` (`stream_interval`, `sent_tokens_offset`, `detokenizer`); the real engine runs it in the e2e
streaming tests, which count every token.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from bitinglip.cluster.vllm.pacing import Pacing


def _llm(**intervals: int) -> Any:
    states = {
        f"{rid}-abcd1234": SimpleNamespace(
            stream_interval=n, sent_tokens_offset=0, detokenizer=SimpleNamespace(num_output_tokens=lambda: 5)
        )
        for rid, n in intervals.items()
    }
    external: defaultdict[str, list[str]] = defaultdict(list)
    for internal in states:
        external[internal.rsplit("-", 1)[0]].append(internal)
    return SimpleNamespace(output_processor=SimpleNamespace(request_states=states, external_req_ids=external))


def _out(*texts: str, finished: bool = False) -> Any:
    return SimpleNamespace(outputs=[SimpleNamespace(text=t) for t in texts], finished=finished)


def _state(llm: Any, rid: str) -> Any:
    return llm.output_processor.request_states[f"{rid}-abcd1234"]


def test_an_empty_first_token_drops_the_interval_to_2_until_text_comes() -> None:
    llm = _llm(r1=8, r2=8)
    pacing = Pacing(llm, "r1", 8)
    pacing.see(_out(""))  # the first token is half a character
    assert _state(llm, "r1").stream_interval == 2 and not pacing.texted
    pacing.see(_out(""))
    assert _state(llm, "r1").stream_interval == 2
    pacing.see(_out("é"))
    assert _state(llm, "r1").stream_interval == 8 and pacing.texted
    assert _state(llm, "r2").stream_interval == 8  # other requests are left alone


def test_a_first_token_with_text_changes_nothing() -> None:
    llm = _llm(r1=8)
    pacing = Pacing(llm, "r1", 8)
    pacing.see(_out("Hello"))
    assert pacing.texted and _state(llm, "r1").stream_interval == 8


def test_leaving_1_counts_every_token_made_as_sent_and_above_1_it_never_goes_back_to_1() -> None:
    llm = _llm(r1=1)
    pacing = Pacing(llm, "r1", 1)
    pacing.set(8)  # before the first text: waits for it
    assert _state(llm, "r1").stream_interval == 1
    pacing.see(_out("Hi"))
    state = _state(llm, "r1")
    assert state.stream_interval == 8 and state.sent_tokens_offset == 5  # the 5 made so far went out one by one
    pacing.set(4)
    assert state.stream_interval == 4
    pacing.set(1)
    assert state.stream_interval == 2  # 1 would send without counting: tokens lost or repeated
    pacing.set(6)
    assert state.stream_interval == 6 and state.sent_tokens_offset == 5  # not recounted above 1


def test_a_finished_request_and_an_engine_without_that_state_are_left_alone() -> None:
    llm = _llm(r1=8)
    Pacing(llm, "r1", 8).see(_out("", finished=True))
    assert _state(llm, "r1").stream_interval == 8
    Pacing(SimpleNamespace(), "r1", 8).see(_out(""))  # a vLLM without an output processor: no error
    gone = Pacing(_llm(), "gone", 1)  # a request the processor no longer knows
    gone.see(_out("x"))
    gone.set(8)
    no_count = _llm(r1=1)
    del _state(no_count, "r1").detokenizer
    left = Pacing(no_count, "r1", 1)
    left.see(_out("x"))
    left.set(8)
    assert _state(no_count, "r1").stream_interval == 1  # cannot count what was sent: stays at 1
