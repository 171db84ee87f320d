"""FirstText: a request's stream interval in vLLM's output processor drops to 1 until its first text, then returns.

The stand-ins have the shape of vLLM 0.32's `OutputProcessor` (`external_req_ids`, `request_states`) and
`RequestState.stream_interval`; the real engine runs it in the e2e streaming tests.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from bitinglip.cluster.vllm.first_text import FirstText


def _state(interval: int) -> Any:
    tokens: list[int] = []
    return SimpleNamespace(
        stream_interval=interval,
        sent_tokens_offset=1,
        tokens=tokens,
        detokenizer=SimpleNamespace(num_output_tokens=lambda: len(tokens)),
    )


def _llm(**intervals: int) -> Any:
    states = {f"{rid}-abcd1234": _state(n) for rid, n in intervals.items()}
    external: defaultdict[str, list[str]] = defaultdict(list)
    for internal in states:
        external[internal.rsplit("-", 1)[0]].append(internal)
    return SimpleNamespace(output_processor=SimpleNamespace(request_states=states, external_req_ids=external))


def _out(*texts: str, finished: bool = False) -> Any:
    return SimpleNamespace(outputs=[SimpleNamespace(text=t) for t in texts], finished=finished)


def _interval(llm: Any, rid: str) -> int:
    return int(llm.output_processor.request_states[f"{rid}-abcd1234"].stream_interval)


def test_an_empty_first_token_drops_the_interval_until_text_comes() -> None:
    llm = _llm(r1=8, r2=8)
    first = FirstText(llm, "r1", 8)
    assert first.waiting
    state = llm.output_processor.request_states["r1-abcd1234"]
    state.tokens[:] = [5]  # sent (the count says 1)
    first.see(_out(""))  # the first token is half a character
    assert _interval(llm, "r1") == 1 and first.waiting
    state.tokens.append(6)
    first.see(_out(""))
    assert _interval(llm, "r1") == 1
    state.tokens.extend([7, 8])  # sent at 1, one step at a time
    first.see(_out("é"))
    assert _interval(llm, "r1") == 8 and not first.waiting
    assert state.sent_tokens_offset == 4  # the tokens sent at 1 count as sent: none goes out again
    assert _interval(llm, "r2") == 8  # other requests are left alone


def test_a_token_held_back_goes_out_before_every_token_is_sent_as_it_comes() -> None:
    llm = _llm(r1=8)
    first = FirstText(llm, "r1", 8)
    state = llm.output_processor.request_states["r1-abcd1234"]
    state.tokens[:] = [5, 6]  # 5 sent; 6 taken since and held for the interval when this output is seen
    first.see(_out(""))
    assert _interval(llm, "r1") == 2  # 6 goes with the next token, from the count
    state.tokens.append(7)
    state.sent_tokens_offset = 3  # vLLM sent 6 and 7 and counted them
    first.see(_out(""))
    assert _interval(llm, "r1") == 1  # nothing held now
    state.tokens.append(8)  # sent at 1
    first.see(_out("x"))
    assert _interval(llm, "r1") == 8 and state.sent_tokens_offset == 4


def test_text_seen_at_2_leaves_vllms_own_count() -> None:
    llm = _llm(r1=8)
    first = FirstText(llm, "r1", 8)
    state = llm.output_processor.request_states["r1-abcd1234"]
    state.tokens[:] = [5, 6]
    first.see(_out(""))
    state.tokens.append(7)
    state.sent_tokens_offset = 3
    first.see(_out("é"))
    assert _interval(llm, "r1") == 8 and state.sent_tokens_offset == 3


def test_a_first_token_with_text_changes_nothing() -> None:
    llm = _llm(r1=8)
    first = FirstText(llm, "r1", 8)
    first.see(_out("Hello"))
    assert not first.waiting and _interval(llm, "r1") == 8


def test_every_token_sent_anyway_needs_nothing() -> None:
    assert not FirstText(_llm(r1=1), "r1", 1).waiting
    assert FirstText(_llm(r1=2), "r1", 2).waiting


def test_a_finished_request_and_an_engine_without_that_state_are_left_alone() -> None:
    llm = _llm(r1=8)
    FirstText(llm, "r1", 8).see(_out("", finished=True))
    assert _interval(llm, "r1") == 8
    FirstText(SimpleNamespace(), "r1", 8).see(_out(""))  # a vLLM without an output processor: no error
    FirstText(_llm(), "gone", 8).see(_out(""))  # a request the processor no longer knows
    bare = _llm(r1=8)
    del bare.output_processor.request_states["r1-abcd1234"].sent_tokens_offset
    FirstText(bare, "r1", 8).see(_out(""))  # no count of sent tokens: not lowered (it could not be put back)
    assert _interval(bare, "r1") == 8
