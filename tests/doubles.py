"""Test doubles: a scripted engine and engine lookup that stand in for vLLM in gateway unit tests. Never in src/.

They satisfy the same protocols as the real parts (`bitinglip.cluster.EngineClient`, `EngineLookup`); the
assignments at the bottom make mypy check that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitinglip.cluster import EngineClient, EngineLookup
from bitinglip.core import NotFound


@dataclass
class FakeLogprob:
    logprob: float
    rank: int
    decoded_token: str


@dataclass
class FakeCompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]] | None = None
    finish_reason: str | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    outputs: list[FakeCompletionOutput]
    finished: bool = False


@dataclass
class ScriptedEngine:
    """Answers every request with the same words, one token per delta, for each of n choices."""

    words: list[str] = field(default_factory=lambda: ["Hello", " there", " friend"])
    max_model_len: int = 64
    served_name: str = "fake"
    model_path: Path = Path("/models/fake")
    delay_s: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 256 for c in text]

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def decode_token(self, token_id: int) -> str:
        return chr(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        # Token 0xE2 stands for the first byte of a three-byte character, the case logprobs must name by bytes.
        return b"\xe2" if token_id == 0xE2 else chr(token_id).encode()

    def sampling_params(self, params: Mapping[str, Any]) -> object:
        return dict(params)

    async def generate(
        self, prompt_ids: list[int], prompt_text: str | None, params: object, request_id: str, priority: int = 0
    ) -> AsyncGenerator[FakeRequestOutput, None]:
        assert isinstance(params, dict)
        self.seen.append({"prompt_ids": prompt_ids, "params": params, "request_id": request_id})
        self.running.add(request_id)
        try:
            limit = min(params["max_tokens"], len(self.words))
            for step in range(limit):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                last = step == limit - 1
                reason = ("length" if params["max_tokens"] <= len(self.words) else "stop") if last else None
                outs = []
                for i in range(params.get("n", 1)):
                    lp = None
                    if params.get("logprobs") is not None:
                        lp = [{100 + step: FakeLogprob(-0.5, 1, self.words[step]), 7: FakeLogprob(-1.5, 2, "x")}]
                    outs.append(FakeCompletionOutput(i, self.words[step], [100 + step], lp, reason))
                yield FakeRequestOutput(request_id, outs, last)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.running.discard(request_id)

    async def abort(self, request_ids: Sequence[str]) -> None:
        self.aborted.extend(request_ids)


class FakeEngines:
    """One scripted engine under its served name."""

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine

    def served_models(self) -> list[str]:
        return [self.engine.served_name]

    def engine_for(self, model: str) -> EngineClient:
        if model != self.engine.served_name:
            raise NotFound(f"the model `{model}` does not exist", param="model", code="model_not_found")
        return self.engine


def _satisfies_the_protocols(engine: ScriptedEngine) -> tuple[EngineClient, EngineLookup]:
    return engine, FakeEngines(engine)  # mypy checks the doubles against the real protocols here
