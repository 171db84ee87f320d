"""Test doubles: a scripted engine, an engine lookup and a model catalog that stand in for vLLM and the registry
in unit tests. Never in src/.

They satisfy the same protocols as the real parts (`bitinglip.cluster.ManagedEngine`, `EngineLookup`,
`ModelCatalog`); the assignments at the bottom make mypy check that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitinglip.cluster import (
    Adapter,
    EngineClient,
    EngineFactory,
    EngineLookup,
    EngineStats,
    Lease,
    ManagedEngine,
    ModelCatalog,
    ServedModel,
    ToolCalls,
)
from bitinglip.core import InvalidInput, NotFound


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
    stop_reason: int | str | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    outputs: list[FakeCompletionOutput]
    finished: bool = False
    prompt_logprobs: list[dict[int, FakeLogprob] | None] | None = None
    num_cached_tokens: int | None = None  # the double has no prefix cache to report


@dataclass
class ScriptedEngine:
    """Answers every request with the same words, one token per delta, for each of n choices; a word that is one
    of the request's stop strings ends it before that word, as vLLM's stop strings do."""

    words: list[str] = field(default_factory=lambda: ["Hello", " there", " friend"])
    max_model_len: int = 64
    served_name: str = "fake"
    model_path: Path = Path("/models/fake")
    delay_s: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    # What the cluster may do with it: start, sleep, wake, die, stop.
    stats: EngineStats = field(default_factory=EngineStats)
    can_sleep: bool = False
    max_num_seqs: int = 4
    start_s: float = 0.0
    fail_start: str | None = None
    pids: list[int] = field(default_factory=list)
    hooks: dict[str, bool] = field(default_factory=dict)  # the double reaches into no library's private state
    calls: list[str] = field(default_factory=list)
    started: bool = False
    died: bool = False
    sleeping: bool = False
    tool_call_parser: str | None = None  # the double parses no tool calls (the real parsers are vLLM's)
    reasoning_parser: str | None = None  # nor reasoning
    embedding: bool = False
    adapters: list[str] = field(default_factory=list)  # the adapters requests named, as the engine would hold them

    @property
    def alive(self) -> bool:
        return self.started and not self.died

    @property
    def max_prompt_chars(self) -> int:
        return self.max_model_len * 16  # its words are under 16 characters each

    @property
    def dead(self) -> bool:
        return self.started and self.died

    @property
    def unfinished_requests(self) -> int:
        return len(self.running)

    async def start(self) -> None:
        self.calls.append("start")
        await asyncio.sleep(self.start_s)
        if self.fail_start:
            raise RuntimeError(self.fail_start)
        self.started = True

    async def stop(self) -> None:
        self.calls.append("stop")
        self.started = False

    def for_adapter(self, adapter: Adapter) -> EngineClient:
        """The double answers as itself, and remembers the adapter as held."""
        if adapter.name not in self.adapters:
            self.adapters.append(adapter.name)
        return self

    async def refresh_adapters(self) -> None:
        self.calls.append("refresh_adapters")

    async def sleep(self) -> None:
        self.calls.append("sleep")
        self.sleeping = True

    async def wake_up(self) -> None:
        self.calls.append("wake_up")
        self.sleeping = False

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 256 for c in text]

    @property
    def chat(self) -> bool:
        return True

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def reasoning(self, prompt_ids: list[int]) -> None:
        return None

    def tool_calls(self, tools: list[dict[str, Any]], tool_choice: Any, parallel: bool) -> ToolCalls:
        raise InvalidInput(f"model {self.served_name} serves no tool calls", param="tools", code="tools_not_supported")

    async def embed(self, prompt_ids: list[int], dimensions: int | None, request_id: str) -> list[float]:
        """8 numbers from the ids (the same ids, the same vector), normalized; Matryoshka-shortened to any size."""
        size = dimensions or 8
        if size > 8:
            raise InvalidInput(f"dimensions must be at most 8, got {size}", param="dimensions")
        raw = [float(sum(prompt_ids[i::8]) + i + 1) for i in range(8)][:size]
        norm = sum(x * x for x in raw) ** 0.5
        return [x / norm for x in raw]

    def decode_token(self, token_id: int) -> str:
        return chr(token_id)

    def decode(self, token_ids: list[int]) -> str:
        return "".join(map(chr, token_ids))

    def token_bytes(self, token_id: int) -> bytes:
        # Token 0xE2 stands for the first byte of a three-byte character, the case logprobs must name by bytes.
        return b"\xe2" if token_id == 0xE2 else chr(token_id).encode()

    def sampling_params(self, params: Mapping[str, Any], *, whole: bool = False) -> object:
        return dict(params) | {"_whole": whole}

    async def generate(
        self, prompt_ids: list[int], prompt_text: str | None, params: object, request_id: str, priority: int = 0
    ) -> AsyncGenerator[FakeRequestOutput, None]:
        assert isinstance(params, dict)
        params = dict(params)
        whole = params.pop("_whole", False)  # as vLLM's FINAL_ONLY: one output, everything in it
        self.seen.append({"prompt_ids": prompt_ids, "params": params, "request_id": request_id, "whole": whole})
        self.running.add(request_id)
        try:
            stops = params.get("stop") or []
            hit = next((k for k, word in enumerate(self.words) if word in stops), None)
            words = self.words if hit is None else self.words[:hit]
            limit = min(params["max_tokens"], len(words))
            gathered: dict[int, FakeCompletionOutput] = {}
            for step in range(limit):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                last = step == limit - 1
                reason = ("length" if params["max_tokens"] <= len(words) else "stop") if last else None
                stopped_by = self.words[hit] if reason == "stop" and hit is not None else None
                outs = []
                for i in range(params.get("n", 1)):
                    lp = None
                    if params.get("logprobs") is not None:
                        lp = [{100 + step: FakeLogprob(-0.5, 1, self.words[step]), 7: FakeLogprob(-1.5, 2, "x")}]
                    outs.append(FakeCompletionOutput(i, self.words[step], [100 + step], lp, reason, stopped_by))
                prompt_lps = None
                if params.get("prompt_logprobs") is not None and ((whole and last) or (not whole and step == 0)):
                    prompt_lps = [None] + [{t: FakeLogprob(-0.25, 1, chr(t))} for t in prompt_ids[1:]]
                if not whole:
                    yield FakeRequestOutput(request_id, outs, last, prompt_lps)
                    continue
                for i, out in enumerate(outs):
                    before = (
                        gathered[i] if step else FakeCompletionOutput(i, "", [], [] if out.logprobs else None, None)
                    )
                    gathered[i] = FakeCompletionOutput(
                        i,
                        before.text + out.text,
                        [*before.token_ids, *out.token_ids],
                        [*before.logprobs, *out.logprobs] if out.logprobs and before.logprobs is not None else None,
                        out.finish_reason,
                        out.stop_reason,
                    )
                if last:
                    yield FakeRequestOutput(request_id, [gathered[i] for i in sorted(gathered)], True, prompt_lps)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.running.discard(request_id)

    async def abort(self, request_ids: Sequence[str]) -> None:
        self.aborted.extend(request_ids)


class _Lease:
    def __init__(self, engine: ScriptedEngine, released: list[str]) -> None:
        self.engine = engine
        self._released = released
        self.queued = 0  # prompt tokens said to wait for the engine, until started()

    def queue_prompt(self, tokens: int) -> None:
        self.queued = tokens

    def started(self) -> None:
        self.queued = 0

    def release(self) -> None:
        self._released.append(self.engine.served_name)


class FakeEngines:
    """One scripted engine under its served name; counts the leases given and released."""

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine
        self.acquired: list[tuple[str, float | str | None]] = []
        self.released: list[str] = []
        self.background = 0  # leases taken for background work

    async def served_models(self) -> list[ServedModel]:
        engine = self.engine
        return [
            ServedModel(
                name=engine.served_name,
                state="ready",
                path=str(engine.model_path),
                max_model_len=engine.max_model_len,
                chat=not engine.embedding,
                tools=engine.tool_call_parser is not None,
                reasoning=engine.reasoning_parser is not None,
                embedding=engine.embedding,
            )
        ]

    async def acquire(self, model: str, keep_alive: float | str | None = None, *, background: bool = False) -> Lease:
        if model != self.engine.served_name:
            raise NotFound(f"the model `{model}` does not exist", param="model", code="model_not_found")
        self.acquired.append((model, keep_alive))
        self.background += background
        return _Lease(self.engine, self.released)


class FakeCatalog:
    """Registered models by name; resolving one gives a folder under ``root``."""

    def __init__(self, root: Path, names: list[str], adapters: list[Adapter] | None = None) -> None:
        self.root = root
        self.names = names
        self.adapter_list = adapters or []

    async def resolve(self, spec: str) -> tuple[Path, str]:
        if spec not in self.names:
            raise NotFound(f"model {spec!r} is not registered", param="model", code="model_not_found")
        return self.root / spec, spec

    async def loadable(self) -> list[str]:
        return list(self.names)

    async def adapters(self) -> list[Adapter]:
        return list(self.adapter_list)


class ScriptedFactory:
    """Makes ScriptedEngines for the cluster and keeps them, in order, to look at (and to kill)."""

    def __init__(self, **engine_fields: Any) -> None:
        self.engine_fields = engine_fields
        self.made: list[ScriptedEngine] = []
        self.args: dict[str, dict[str, Any]] = {}  # the engine arguments each deployment's last engine got

    def __call__(self, path: Path, name: str, args: dict[str, Any], env: dict[str, str]) -> ManagedEngine:
        engine = ScriptedEngine(served_name=name, model_path=path, **self.engine_fields)
        self.made.append(engine)
        self.args[name] = dict(args)
        return engine

    def of(self, name: str) -> list[ScriptedEngine]:
        return [e for e in self.made if e.served_name == name]


def _satisfies_the_protocols(
    engine: ScriptedEngine, catalog: FakeCatalog, factory: ScriptedFactory
) -> tuple[EngineClient, ManagedEngine, EngineLookup, ModelCatalog, EngineFactory]:
    # mypy checks the doubles against the real protocols here
    return engine, engine, FakeEngines(engine), catalog, factory
