"""The conversation `bitinglip run` holds with a model: its messages, system prompt and sampling parameters, and
one answer streamed from `/v1/chat/completions` to the terminal as it is generated."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from bitinglip.core import BitingLipError

if TYPE_CHECKING:
    from bitinglip.cli.cluster import Api

STREAM_READ_TIMEOUT_S = 600.0  # the longest wait for the next token (a long prompt's prefill on a CPU)
DIM, RESET = "\x1b[2m", "\x1b[0m"


@dataclass(frozen=True)
class Parameter:
    """A sampling parameter `/set parameter` takes: its type and the range the server accepts."""

    kind: Callable[[str], Any]
    check: Callable[[Any], bool]
    accepts: str  # what `check` accepts, for the error


def _number(value: str) -> float:
    return float(value)


def _whole(value: str) -> int:
    return int(value)


# The request fields /v1/chat/completions takes, with the server's ranges (gateway/protocol/sampling.py), so a bad
# value is refused as it is typed rather than on the next message.
PARAMETERS: dict[str, Parameter] = {
    "temperature": Parameter(_number, lambda v: 0 <= v <= 2, "a number from 0 to 2"),
    "top_p": Parameter(_number, lambda v: 0 < v <= 1, "a number above 0, at most 1"),
    "top_k": Parameter(_whole, lambda v: v >= -1, "a whole number, -1 (off) or more"),
    "min_p": Parameter(_number, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "max_tokens": Parameter(_whole, lambda v: v >= 1, "a whole number, 1 or more"),
    "seed": Parameter(_whole, lambda v: -(2**63) <= v < 2**63, "a whole number (64-bit)"),
    "presence_penalty": Parameter(_number, lambda v: -2 <= v <= 2, "a number from -2 to 2"),
    "frequency_penalty": Parameter(_number, lambda v: -2 <= v <= 2, "a number from -2 to 2"),
    "repetition_penalty": Parameter(_number, lambda v: v > 0, "a number above 0"),
    "min_tokens": Parameter(_whole, lambda v: v >= 0, "a whole number, 0 or more"),
    "stop": Parameter(str, bool, "text to stop at (repeat the parameter for more)"),
}
# Ollama's names for the same parameters, so what works in `ollama run` works here.
ALIASES = {"num_predict": "max_tokens", "repeat_penalty": "repetition_penalty"}
MAX_STOP = 16


def parameter_value(name: str, raw: str) -> tuple[str, Any]:
    """The request field and value of `/set parameter NAME VALUE`; `BitingLipError` saying what is wrong."""
    field_name = ALIASES.get(name, name)
    spec = PARAMETERS.get(field_name)
    if spec is None:
        raise BitingLipError(f"unknown parameter {name!r}; parameters: {', '.join(PARAMETERS)}")
    try:
        value = spec.kind(raw)
    except ValueError:
        value = None
    if value is None or not spec.check(value):
        raise BitingLipError(f"{name} must be {spec.accepts}, not {raw!r}")
    return field_name, value


@dataclass
class Reply:
    """One answer: its text, why it ended, and the usage the server counted (None if it was interrupted)."""

    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    interrupted: bool = False

    def stats(self) -> str:
        """What `--verbose` prints after an answer: tokens and speed."""
        elapsed = time.monotonic() - self.started
        lines = [f"total duration:       {elapsed:.2f} s"]
        if self.first_token is not None:
            lines.append(f"time to first token:  {self.first_token - self.started:.2f} s")
        if self.usage:
            completion = int(self.usage.get("completion_tokens") or 0)
            lines.append(f"prompt tokens:        {self.usage.get('prompt_tokens')}")
            lines.append(f"completion tokens:    {completion}")
            if self.first_token is not None and completion > 1 and elapsed > self.first_token - self.started:
                rate = (completion - 1) / (elapsed - (self.first_token - self.started))
                lines.append(f"generation rate:      {rate:.1f} tokens/s")
        if self.finish_reason:
            lines.append(f"finish reason:        {self.finish_reason}")
        return "\n".join(lines)


@dataclass
class Chat:
    """A conversation with ``model``: what `/set`, `/clear` change, and the messages sent with each turn."""

    model: str
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    keep_alive: float | int | str | None = None

    def set_parameter(self, name: str, raw: str) -> str:
        field_name, value = parameter_value(name, raw)
        if field_name == "stop":
            stops = [*self.parameters.get("stop", []), value]
            if len(stops) > MAX_STOP:
                raise BitingLipError(f"at most {MAX_STOP} stop sequences")
            value = stops
        self.parameters[field_name] = value
        return field_name

    def unset_parameter(self, name: str) -> None:
        field_name = ALIASES.get(name, name)
        if field_name not in PARAMETERS:
            raise BitingLipError(f"unknown parameter {name!r}; parameters: {', '.join(PARAMETERS)}")
        self.parameters.pop(field_name, None)

    def body(self, text: str) -> dict[str, Any]:
        """The /v1/chat/completions request for the next user message ``text`` (not yet added to the history)."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [*system, *self.messages, {"role": "user", "content": text}],
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.parameters,
        }
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def send(self, api: Api, text: str, out: IO[str], *, show_reasoning: bool = False) -> Reply:
        """Stream the answer to ``text`` onto ``out`` as it comes. The turn joins the conversation when it has an
        answer, a partial one too (Ctrl-C: `KeyboardInterrupt` closes the stream, which aborts the request on
        the server, and is not raised further: the reply says it was interrupted). An error leaves the
        conversation as it was."""
        reply = Reply()
        try:
            stream_answer(api, self.body(text), reply, out, show_reasoning=show_reasoning)
        except KeyboardInterrupt:
            reply.interrupted = True
        if reply.text or not reply.interrupted:
            self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply.text}]
        return reply


def stream_answer(api: Api, body: dict[str, Any], reply: Reply, out: IO[str], *, show_reasoning: bool) -> None:
    """POST ``body`` (stream=true) and write each piece of content to ``out`` as it arrives, filling ``reply``.

    An error before the stream (the OpenAI envelope) or in it (an `error` event) is a `BitingLipError` with the
    server's message."""
    import httpx

    from bitinglip.cli.cluster import _error_message

    timeout = httpx.Timeout(STREAM_READ_TIMEOUT_S, connect=api.client.timeout.connect)
    reasoning_open = False
    with api._reaching("POST", "/v1/chat/completions"):
        with api.client.stream("POST", "/v1/chat/completions", json=body, timeout=timeout) as response:
            if response.is_error:
                response.read()
                raise BitingLipError(_error_message(response))
            try:
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, `event:` lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise BitingLipError(f"the server sent an event that is not JSON: {data[:200]!r}") from None
                    if error := event.get("error"):
                        message = error.get("message") if isinstance(error, dict) else str(error)
                        raise BitingLipError(str(message or "the server ended the answer with an error"))
                    if event.get("usage"):
                        reply.usage = event["usage"]
                    for choice in event.get("choices") or []:
                        delta = choice.get("delta") or {}
                        thought = delta.get("reasoning_content") or delta.get("reasoning")
                        content = delta.get("content")
                        if (thought or content) and reply.first_token is None:
                            reply.first_token = time.monotonic()
                        if thought:
                            reply.reasoning += thought
                            if show_reasoning:
                                out.write((DIM if not reasoning_open else "") + thought)
                                reasoning_open = True
                        if content:
                            if reasoning_open:
                                out.write(RESET + "\n\n")
                                reasoning_open = False
                            reply.text += content
                            out.write(content)
                        if choice.get("finish_reason"):
                            reply.finish_reason = choice["finish_reason"]
                    out.flush()
            finally:
                if reasoning_open:
                    out.write(RESET)
                    out.flush()
