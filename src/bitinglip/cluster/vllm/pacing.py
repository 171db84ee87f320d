"""How many tokens of a streamed request vLLM sends per output, changed while it streams.

vLLM fixes a request's stream interval when the request is added; BitingLip's `"auto"` interval depends on how
many streams are open, which changes while a request streams (at 64 at once a wave of requests arrives one by
one, and the first half saw fewer than 32 streams open: every token its own event for the whole stream).
`Pacing` moves the interval in vLLM's output processor (`OutputProcessor.external_req_ids`, `RequestState`'s
`stream_interval`, `sent_tokens_offset` and `detokenizer`, vLLM 0.32); where a release lacks them it does nothing.

- **The first text leaves at once.** A first token that decodes to no text yet (part of a UTF-8 character, a
  skipped special token) is sent empty, and the text then waited a whole interval: with random weights a
  quarter of the requests at 64 streams waited ~100 ms. Until a request's first text its interval is 2.
- **Never back to 1, and counted when leaving 1.** At 1 vLLM sends each step's tokens as they come without
  counting what it sent; above 1 it sends from that count. So an interval above 1 goes no lower than 2, and when
  one leaves 1 the count is set to the tokens made so far (all of them were sent, one step at a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

HURRIED = 2  # the smallest interval at which vLLM still sends from its count of the tokens it has sent


class Pacing:
    __slots__ = ("_applied", "_llm", "_request_id", "_target", "texted")

    def __init__(self, llm: Any, request_id: str, interval: int) -> None:
        self._llm = llm
        self._request_id = request_id
        self._applied = interval  # what vLLM has for the request
        self._target = interval  # what it should have once its first text is out
        self.texted = False

    def see(self, output: Any) -> None:
        """Called with each output until the first text (`texted`)."""
        if any(choice.text for choice in output.outputs):
            self.texted = True
            if self._applied != self._target:
                self._apply(self._target)
        elif self._applied > HURRIED and not output.finished:
            self._apply(HURRIED)

    def set(self, interval: int) -> None:
        """The interval from now on (from the first text on, if that has not come yet)."""
        self._target = interval
        if self.texted and interval != self._applied:
            self._apply(interval)

    def _apply(self, interval: int) -> None:
        for state in self._states():
            current = state.stream_interval
            if current > 1:
                state.stream_interval = max(interval, HURRIED)
            elif interval > 1:
                detokenizer = getattr(state, "detokenizer", None)
                if detokenizer is None or not hasattr(state, "sent_tokens_offset"):
                    continue  # cannot count what was sent: left at 1
                state.sent_tokens_offset = detokenizer.num_output_tokens()
                state.stream_interval = interval
        self._applied = interval if interval > 1 or self._applied <= 1 else HURRIED

    def _states(self) -> Iterator[Any]:
        processor = getattr(self._llm, "output_processor", None)
        states = getattr(processor, "request_states", {})
        for internal_id in getattr(processor, "external_req_ids", {}).get(self._request_id, ()):
            state = states.get(internal_id)
            if state is not None and hasattr(state, "stream_interval"):
                yield state
