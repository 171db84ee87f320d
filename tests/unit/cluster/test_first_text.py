"""FirstText: a request's stream interval in vLLM's output processor drops to 1 until its first text, then returns.

On vLLM's own `OutputProcessor` with the tiny model's tokenizer (as vLLM gives it to an engine): requests are added
as the engine adds them, and token ids are fed as the engine core would send them. What a client would receive is
what comes out of each request's output collector. Only the `AsyncLLM` around the processor is a plain holder: it
cannot be built without starting an engine core, and `FirstText` reads nothing else of it.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from bitinglip.cluster.vllm.first_text import FirstText


class Stream:
    """One request in a real output processor."""

    def __init__(self, processor: Any, request_id: str) -> None:
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine import EngineCoreRequest
        from vllm.v1.engine.output_processor import RequestOutputCollector

        self.processor = processor
        self.internal_id = f"{request_id}-abcd1234"  # vLLM adds a suffix of its own to the caller's id
        request = EngineCoreRequest(
            request_id=self.internal_id,
            prompt_token_ids=[1, 2, 3],
            mm_features=None,
            sampling_params=SamplingParams(max_tokens=100, output_kind=RequestOutputKind.DELTA),
            pooling_params=None,
            arrival_time=time.time(),
            lora_request=None,
            cache_salt=None,
            data_parallel_rank=None,
            external_req_id=request_id,
        )
        self.queue = RequestOutputCollector(RequestOutputKind.DELTA, request_id)
        processor.add_request(request, None, queue=self.queue)
        self.state = processor.request_states[self.internal_id]
        self.received: list[int] = []
        self.text = ""

    def step(self, *tokens: int, finished: bool = False) -> Any:
        """The engine core's output for one step; what the client gets from it (None: held for the interval)."""
        from vllm.v1.engine import EngineCoreOutput, FinishReason

        reason = FinishReason.LENGTH if finished else None
        self.processor.process_outputs(
            [EngineCoreOutput(request_id=self.internal_id, new_token_ids=list(tokens), finish_reason=reason)]
        )
        output = self.queue.get_nowait()
        if output is not None:
            (choice,) = output.outputs
            self.received += choice.token_ids
            self.text += choice.text
        return output


@pytest.fixture
def tokens(vllm_tokenizer: Any) -> SimpleNamespace:
    """Token ids of the tiny model: the two halves of "é" (each alone decodes to no text), a special token that is
    skipped in text, and plain words."""
    head, tail = vllm_tokenizer.encode("é", add_special_tokens=False)
    assert vllm_tokenizer.decode([head]) == vllm_tokenizer.decode([tail]) == "\ufffd"
    pad = vllm_tokenizer.convert_tokens_to_ids("<|pad|>")
    words = vllm_tokenizer.encode(" the cat sat on the mat and the dog", add_special_tokens=False)
    assert len(words) >= 8
    return SimpleNamespace(head=head, tail=tail, pad=pad, words=words)


def _llm(vllm_tokenizer: Any, interval: int = 8) -> Any:
    from vllm.v1.engine.output_processor import OutputProcessor

    return SimpleNamespace(output_processor=OutputProcessor(vllm_tokenizer, log_stats=False, stream_interval=interval))


def test_without_it_a_first_token_with_no_text_keeps_the_text_waiting_for_the_interval(
    vllm_tokenizer: Any, tokens: SimpleNamespace
) -> None:
    """vLLM's own behaviour, which FirstText exists for: the first token goes out at once, without text, and the
    token that completes the character waits for the interval's count."""
    stream = Stream(_llm(vllm_tokenizer).output_processor, "r1")
    assert stream.step(tokens.head) is not None and stream.text == ""
    assert stream.step(tokens.tail) is None  # "é" is held: 2 tokens of 8


def test_an_empty_first_token_drops_the_interval_until_text_comes(vllm_tokenizer: Any, tokens: SimpleNamespace) -> None:
    llm = _llm(vllm_tokenizer)
    stream, other = Stream(llm.output_processor, "r1"), Stream(llm.output_processor, "r2")
    first = FirstText(llm, "r1", 8)
    assert first.waiting
    first.see(stream.step(tokens.head))
    assert stream.state.stream_interval == 1 and first.waiting
    out = stream.step(tokens.tail)  # sent at once: the interval is 1
    assert out is not None and stream.text == "é"
    first.see(out)
    assert not first.waiting and stream.state.stream_interval == 8
    assert stream.state.sent_tokens_offset == 2  # the tokens sent at 1 count as sent: none goes out again
    assert other.state.stream_interval == 8  # other requests are left alone
    for word in tokens.words[:7]:
        assert stream.step(word) is None  # the interval again: 7 tokens of 8 held
    assert stream.step(tokens.words[7]) is not None
    stream.step(finished=True)
    assert stream.received == [tokens.head, tokens.tail, *tokens.words[:8]]  # each token once, in order
    assert stream.text == vllm_tokenizer.decode(stream.received)


def test_a_token_held_back_goes_out_before_every_token_is_sent_as_it_comes(
    vllm_tokenizer: Any, tokens: SimpleNamespace
) -> None:
    """The output FirstText sees may be a step old: a token taken since and held for the interval would never go
    out at 1, so the interval is 2 first, which sends it with the next token."""
    llm = _llm(vllm_tokenizer)
    stream = Stream(llm.output_processor, "r1")
    first = FirstText(llm, "r1", 8)
    seen = stream.step(tokens.head)
    assert stream.step(tokens.pad) is None  # taken and held before FirstText sees the first output
    first.see(seen)
    assert stream.state.stream_interval == 2
    out = stream.step(tokens.pad)
    assert out is not None and stream.received == [tokens.head, tokens.pad, tokens.pad] and stream.text == ""
    first.see(out)
    assert stream.state.stream_interval == 1  # nothing held now
    out = stream.step(tokens.tail)
    assert out is not None and stream.text == "é"
    first.see(out)
    assert stream.state.stream_interval == 8 and stream.state.sent_tokens_offset == 4
    for word in tokens.words[:8]:
        stream.step(word)
    stream.step(finished=True)
    assert stream.received == [tokens.head, tokens.pad, tokens.pad, tokens.tail, *tokens.words[:8]]
    assert stream.text == vllm_tokenizer.decode(stream.received, skip_special_tokens=True)


def test_text_seen_at_2_leaves_vllms_own_count(vllm_tokenizer: Any, tokens: SimpleNamespace) -> None:
    llm = _llm(vllm_tokenizer)
    stream = Stream(llm.output_processor, "r1")
    first = FirstText(llm, "r1", 8)
    seen = stream.step(tokens.head)
    stream.step(tokens.pad)
    first.see(seen)
    out = stream.step(tokens.tail)  # at 2: the held token and this one, counted by vLLM
    assert out is not None and stream.text == "é"
    first.see(out)
    assert stream.state.stream_interval == 8 and stream.state.sent_tokens_offset == 3
    assert stream.received == [tokens.head, tokens.pad, tokens.tail]


def test_a_first_token_with_text_changes_nothing(vllm_tokenizer: Any, tokens: SimpleNamespace) -> None:
    llm = _llm(vllm_tokenizer)
    stream = Stream(llm.output_processor, "r1")
    first = FirstText(llm, "r1", 8)
    first.see(stream.step(tokens.words[0]))
    assert not first.waiting and stream.state.stream_interval == 8


def test_every_token_sent_anyway_needs_nothing(vllm_tokenizer: Any) -> None:
    assert not FirstText(_llm(vllm_tokenizer, interval=1), "r1", 1).waiting
    assert FirstText(_llm(vllm_tokenizer, interval=2), "r1", 2).waiting


def test_a_finished_or_aborted_request_is_left_alone(vllm_tokenizer: Any, tokens: SimpleNamespace) -> None:
    llm = _llm(vllm_tokenizer)
    done = Stream(llm.output_processor, "done")
    FirstText(llm, "done", 8).see(done.step(tokens.head, finished=True))
    assert done.state.stream_interval == 8
    gone = Stream(llm.output_processor, "gone")
    seen = gone.step(tokens.head)
    llm.output_processor.abort_requests(["gone"], internal=False)
    FirstText(llm, "gone", 8).see(seen)  # the processor no longer knows it: no error
    assert gone.state.stream_interval == 8


def test_a_release_without_that_state_is_left_alone(vllm_tokenizer: Any, tokens: SimpleNamespace) -> None:
    """Stand-ins for a vLLM release without the state FirstText needs (only the pinned release can be built):
    no output processor at all, or a request state without its count of sent tokens (removed here from a real
    one), which could not be put back, so the interval is not lowered."""
    llm = _llm(vllm_tokenizer)
    stream = Stream(llm.output_processor, "r1")
    seen = stream.step(tokens.head)
    FirstText(SimpleNamespace(), "r1", 8).see(seen)
    del stream.state.sent_tokens_offset
    FirstText(llm, "r1", 8).see(seen)
    assert stream.state.stream_interval == 8
