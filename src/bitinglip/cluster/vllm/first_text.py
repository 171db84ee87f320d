"""A stream's first text leaves at once, also when its first token has none.

With a stream interval of N, vLLM sends a request's first token at once and then one output every N tokens. A
first token that decodes to no text yet (part of a UTF-8 character, a special token that is skipped) is sent
empty, so the client's first text waited N more tokens (docs/performance.md). Until a request's first text,
`FirstText` puts its interval in vLLM's output processor down to 1 (every token sent as it comes), and back
once the text is out.

At 1, vLLM sends each step's new tokens and does not count what it has sent; above 1 it sends the tokens past
that count (`sent_tokens_offset`). Hence two rules. The interval goes to 1 only when every token so far has been
sent: the output this sees may be a step old, and a token taken since but held for the interval would never go
out at 1 (its text would, with the next; its id would not). With such a token held, the interval goes to 2 first,
which sends it with the next token, and to 1 at the next output. And on the way back the count is set to every
token the request has, each of which went out at 1: without that, the next output would send them again.

That state is vLLM's (`OutputProcessor.external_req_ids`, `RequestState.stream_interval`, `sent_tokens_offset`
and `detokenizer`): a hook (`hooks.py`, `first_text_interval`), whose preconditions every engine start checks. Where
a release lacks that state this does nothing, and the stream is only as slow to start as before.
"""

from __future__ import annotations

from typing import Any


class FirstText:
    __slots__ = ("_llm", "_lowered", "_request_id", "waiting")

    def __init__(self, llm: Any, request_id: str, interval: int) -> None:
        self._llm = llm
        self._request_id = request_id
        self._lowered: list[tuple[Any, int]] = []
        self.waiting = interval > 1  # nothing to do for a request that sends every token anyway

    def see(self, output: Any) -> None:
        """Called with each output while `waiting`: the first with text ends the wait."""
        if any(choice.text for choice in output.outputs):
            self.waiting = False
            for state, interval in self._lowered:
                if state.stream_interval == 1:
                    state.sent_tokens_offset = state.detokenizer.num_output_tokens()  # all sent, at 1
                state.stream_interval = interval
            self._lowered = []
            return
        if output.finished:
            return
        if not self._lowered:
            processor = getattr(self._llm, "output_processor", None)
            states = getattr(processor, "request_states", {})
            for internal_id in getattr(processor, "external_req_ids", {}).get(self._request_id, ()):
                state = states.get(internal_id)
                interval = getattr(state, "stream_interval", 1)
                counts = hasattr(state, "sent_tokens_offset") and hasattr(state, "detokenizer")
                if state is not None and interval > 1 and counts:
                    self._lowered.append((state, interval))
        for state, _ in self._lowered:
            if state.stream_interval != 1:  # at 1 its count of sent tokens stands still: nothing to read there
                held = state.detokenizer.num_output_tokens() - state.sent_tokens_offset
                state.stream_interval = 1 if held == 0 else 2
