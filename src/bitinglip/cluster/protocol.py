"""What the rest of BitingLip may use of an engine and of the cluster: structural types, no vLLM.

The real engine (`cluster/vllm/engine.py`) and the test double in `tests/doubles.py` both satisfy these
protocols; the gateway and the task queue are written against them only. The output types mirror the few
attributes of vLLM's `RequestOutput` the gateway reads, as read-only properties, so vLLM's objects pass
through the hot path as they are, with no per-token copy.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from bitinglip.cluster.stats import EngineStats


class TokenLogprob(Protocol):
    @property
    def logprob(self) -> float: ...
    @property
    def rank(self) -> int | None: ...
    @property
    def decoded_token(self) -> str | None: ...


class CompletionDelta(Protocol):
    """The new part of one choice since the last delta."""

    @property
    def index(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> Sequence[int]: ...
    @property
    def logprobs(self) -> Sequence[Mapping[int, TokenLogprob] | None] | None: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def stop_reason(self) -> int | str | None:
        """What stopped it when `finish_reason` is "stop": the stop string it met, a stop token id, None for EOS."""
        ...


class EngineOutput(Protocol):
    """One step's output for one request: a delta per choice."""

    @property
    def outputs(self) -> Sequence[CompletionDelta]: ...
    @property
    def prompt_logprobs(self) -> Sequence[Mapping[int, TokenLogprob] | None] | None:
        """The prompt's tokens' logprobs (the first is None) when asked for, in the request's first output."""
        ...

    @property
    def num_cached_tokens(self) -> int | None:
        """The prompt's tokens the engine found in its prefix cache (not computed again); None: it does not say."""
        ...


class ToolCall(msgspec.Struct, kw_only=True):
    """A tool call read from a whole answer: its arguments are a JSON text, as OpenAI sends them."""

    id: str
    name: str
    arguments: str


class ToolCallDelta(msgspec.Struct, kw_only=True):
    """A fragment of the ``index``-th call of a streamed answer: its id and name first, then argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


class ToolCalls(Protocol):
    """One request's tool calling on one engine: a constraint for its sampling, then the calls in its output."""

    @property
    def constraint(self) -> dict[str, Any] | None:
        """The structured-output constraint (as `sampling_params` takes it) that keeps calls well formed."""
        ...

    @property
    def skip_special_tokens(self) -> bool: ...

    def parse(self, text: str, cut: bool = False) -> tuple[str | None, list[ToolCall]]:
        """The content and the calls in one choice's whole text; ``cut``: it ended at its token limit, and the
        calls finished before the cut are kept."""
        ...

    def parse_delta(
        self, index: int, text: str, token_ids: Sequence[int], finished: bool
    ) -> tuple[str | None, list[ToolCallDelta]]:
        """The content and call fragments one streamed delta of choice ``index`` adds (held back while unsure)."""
        ...

    def called(self, index: int) -> bool:
        """Choice ``index`` has streamed a call."""
        ...


class Reasoning(Protocol):
    """One request's reasoning on one engine: each choice's text split into its reasoning and its answer."""

    def parse(self, index: int, text: str) -> tuple[str | None, str | None]:
        """The reasoning and the answer in choice ``index``'s whole text (None for a part it has not)."""
        ...

    def parse_delta(self, index: int, text: str, token_ids: Sequence[int]) -> tuple[str | None, str | None]:
        """The reasoning and the answer one streamed delta of choice ``index`` adds."""
        ...

    def tokens(self) -> int:
        """Tokens of reasoning made so far, over every choice."""
        ...


class Adapter(msgspec.Struct, frozen=True, kw_only=True):
    """A LoRA adapter as the cluster serves it: on the engines of its base model, by its own name."""

    name: str
    base: str  # the registry name of its base model
    path: str
    rank: int
    target_modules: tuple[str, ...]


class EngineClient(Protocol):
    """One running engine serving one model."""

    @property
    def served_name(self) -> str: ...
    @property
    def model_path(self) -> Path: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def max_prompt_chars(self) -> int:
        """The longest text (in characters) whose tokens could fit in `max_model_len`: longer is refused unread."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        ...

    @property
    def chat(self) -> bool:
        """The model has a chat template (serves /v1/chat/completions)."""
        ...

    @property
    def tool_call_parser(self) -> str | None:
        """The parser of the model's tool-call format; None: the deployment serves no tools."""
        ...

    @property
    def reasoning_parser(self) -> str | None:
        """The parser of the model's reasoning format; None: its output is all answer."""
        ...

    @property
    def embedding(self) -> bool:
        """The engine pools (serves /v1/embeddings) instead of generating."""
        ...

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The prompt text the model's chat template makes of ``messages`` (and ``tools``, and the template's own
        variables such as `enable_thinking`); InvalidInput if it cannot."""
        ...

    def reasoning(self, prompt_ids: list[int]) -> Reasoning | None:
        """Reasoning for one request on ``prompt_ids``; None where the deployment names no `reasoning_parser` or
        the prompt has closed the reasoning already (thinking turned off in the template)."""
        ...

    def tool_calls(self, tools: list[dict[str, Any]], tool_choice: Any, parallel: bool) -> ToolCalls:
        """Tool calling for one request (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`, checked)."""
        ...

    def decode_token(self, token_id: int) -> str: ...

    def decode(self, token_ids: list[int]) -> str:
        """The text of ``token_ids``; InvalidInput for an id the tokenizer does not have."""
        ...

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for, also when they are only part of a UTF-8 character."""
        ...

    def sampling_params(self, params: Mapping[str, Any], *, whole: bool = False) -> object:
        """The engine's own sampling parameters made from a plain dict; InvalidInput naming a bad one.
        ``whole``: the caller wants the finished output only (one item, no per-token deltas: less work)."""
        ...

    def generate(
        self, prompt_ids: list[int], prompt_text: str | None, params: object, request_id: str, priority: int = 0
    ) -> AsyncGenerator[EngineOutput, None]:
        """Deltas until the request finishes. Closing or cancelling the iterator aborts the request."""
        ...

    async def embed(self, prompt_ids: list[int], dimensions: int | None, request_id: str) -> list[float]:
        """The embedding of one prompt (an embedding engine only), normalized; ``dimensions`` shortens it where the
        model allows (Matryoshka), else InvalidInput. Cancelling the call aborts the request."""
        ...

    async def abort(self, request_ids: Sequence[str]) -> None:
        """Abort requests from elsewhere than their consumer (a cancelled task, a departed client)."""
        ...


class ManagedEngine(EngineClient, Protocol):
    """An engine the cluster starts, watches, puts to sleep and stops: the vLLM one, or a test double."""

    @property
    def stats(self) -> EngineStats:
        """Its latest step's numbers: requests running and waiting, KV cache use, tokens made."""
        ...

    @property
    def alive(self) -> bool:
        """Started, and its engine core has not died."""
        ...

    @property
    def dead(self) -> bool:
        """Started, then its engine core died."""
        ...

    @property
    def can_sleep(self) -> bool:
        """Can be put to sleep (its memory freed, woken in seconds) instead of stopped."""
        ...

    @property
    def pids(self) -> list[int]:
        """Its engine processes (their workers are their children)."""
        ...

    @property
    def hooks(self) -> dict[str, bool]:
        """Its hooks into the engine library's private state, by name: whether each took when it started."""
        ...

    @property
    def max_num_seqs(self) -> int: ...
    @property
    def unfinished_requests(self) -> int: ...

    @property
    def adapters(self) -> list[str]:
        """The LoRA adapters it holds loaded (as of its last `refresh_adapters`), least recently used first."""
        ...

    def for_adapter(self, adapter: Adapter) -> EngineClient:
        """The engine as ``adapter``: it generates with the adapter (loaded on first use), all else is its own."""
        ...

    async def refresh_adapters(self) -> None:
        """Ask the engine which adapters it holds now (its slots evict the least recently used)."""
        ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def sleep(self) -> None: ...
    async def wake_up(self) -> None: ...


# (model path, served name, engine arguments, environment) -> an engine not yet started
EngineFactory = Callable[[Path, str, dict[str, Any], dict[str, str]], ManagedEngine]


class Lease(Protocol):
    """A request's hold on one engine of a deployment: counted in flight until released (once)."""

    @property
    def engine(self) -> EngineClient: ...
    def queue_prompt(self, tokens: int) -> None:
        """Count the request's prompt tokens as waiting for the engine (the deployment bounds them)."""

    def started(self) -> None:
        """The engine made the request's first step."""

    def release(self) -> None: ...


class ServedModel(msgspec.Struct, kw_only=True):
    """A model name clients can send: deployed (any state), or registered and loadable on demand."""

    name: str
    state: str  # a deployment state, or "on_demand"
    path: str | None = None
    max_model_len: int | None = None
    chat: bool | None = None  # has a chat template; None while no engine has loaded it
    tools: bool | None = None  # parses tool calls (a tool_call_parser); None while no engine has loaded it
    reasoning: bool | None = None  # parses reasoning (a reasoning_parser); None while no engine has loaded it
    embedding: bool | None = None  # pools (embeddings) instead of generating; None while not loaded
    parent: str | None = None  # a LoRA adapter's: the model it is served on


class EngineLookup(Protocol):
    """Where the gateway finds an engine for a model name (the cluster, or a test double)."""

    async def acquire(self, model: str, keep_alive: float | str | None = None, *, background: bool = False) -> Lease:
        """A lease on an engine serving ``model``, loading it first if need be (bounded wait); NotFound, or
        Unavailable with a retry hint (loading too long, restarting, failed, at its limits). ``background``:
        for a task or batch line, counted apart so background work can yield to interactive requests."""
        ...

    async def served_models(self) -> list[ServedModel]: ...
