"""LoRA adapters on vLLM engines: what vLLM refuses in an adapter, the engine arguments that serve a base model's
adapters and the memory they reserve, and an engine seen as one of its adapters.

An engine serves adapters only if it was started with `enable_lora`; its `max_lora_rank` and `lora_target_modules`
bound which adapters it can take, `max_loras` how many run in one batch, `max_cpu_loras` how many it keeps loaded
(least recently used evicted). The cluster starts a base's engines with these sized for the adapters registered
for it, and restarts them (when idle) for an adapter they do not cover.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitinglip.cluster.protocol import Adapter, EngineOutput, Reasoning, ToolCalls
from bitinglip.core import InvalidInput, get_logger

if TYPE_CHECKING:
    from bitinglip.cluster.vllm.engine import VllmEngine

log = get_logger(__name__)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's `max_lora_rank` takes
# Adapters in one batch: the base's adapter count, within these bounds (each slot is memory placement counts).
MIN_MAX_LORAS, MAX_MAX_LORAS = 4, 8
DEFAULT_MAX_CPU_LORAS = 16  # adapters kept loaded
# The engine arguments that decide which adapters an engine serves; a deployment's own settings of them are kept.
LORA_ARGS = ("enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras", "lora_target_modules")


def peft_problems(config: dict[str, Any]) -> list[str]:
    """What the installed vLLM refuses in an adapter's `adapter_config.json` (DoRA, a bias, a rank past its largest,
    missing fields...): [] when nothing."""
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    try:
        PEFTHelper.from_dict(dict(config)).validate_legal(LoRAConfig(max_lora_rank=LORA_RANKS[-1]))
    except (ValueError, TypeError) as exc:
        return [str(exc)]
    return []


def lora_args(args: dict[str, Any], adapters: Sequence[Adapter]) -> dict[str, Any]:
    """``args`` with LoRA on, sized for ``adapters``, where there are any and the settings do not turn it off:
    `max_lora_rank` the smallest vLLM takes that covers their ranks, `lora_target_modules` the modules they adapt
    (vLLM then wraps only those layers: less work per step for every request), the rest BitingLip's defaults.
    What the deployment's settings give is kept."""
    if not (adapters or args.get("enable_lora")) or args.get("enable_lora") is False:
        return args
    out = {**args, "enable_lora": True}
    if adapters:
        rank = max(a.rank for a in adapters)
        out.setdefault("max_lora_rank", next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1]))
        out.setdefault("lora_target_modules", sorted({m for a in adapters for m in a.target_modules}))
    out.setdefault("max_loras", min(max(len(adapters), MIN_MAX_LORAS), MAX_MAX_LORAS))
    out.setdefault("max_cpu_loras", max(int(out["max_loras"]), DEFAULT_MAX_CPU_LORAS))
    return out


def uncovered(args: Mapping[str, Any], adapter: Adapter) -> str | None:
    """Why an engine started with ``args`` cannot serve ``adapter``; None when it can."""
    if not args.get("enable_lora"):
        return "its engines run without LoRA"
    rank = int(args.get("max_lora_rank") or 16)
    if adapter.rank > rank:
        return f"its engines take LoRA ranks up to {rank} (max_lora_rank), and the adapter's is {adapter.rank}"
    targets = args.get("lora_target_modules")
    if targets is not None and not set(adapter.target_modules) <= set(targets):
        missing = sorted(set(adapter.target_modules) - set(targets))
        return f"its engines adapt {', '.join(sorted(targets))} only (lora_target_modules), not {', '.join(missing)}"
    return None


def lora_bytes(model_dir: Path, args: Mapping[str, Any], *, cpu: bool) -> int:
    """Memory an engine started with ``args`` reserves for adapters: `max_loras` slots of rank `max_lora_rank` on
    each adapted layer (in + out features x rank, at the model's 2-byte width), and on the CPU build also the
    `max_cpu_loras` adapters it keeps loaded. 0 without LoRA, or where config.json does not give the sizes."""
    if not args.get("enable_lora"):
        return 0
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    text = config.get("text_config") or config
    hidden, layers = text.get("hidden_size"), text.get("num_hidden_layers")
    heads = text.get("num_attention_heads")
    if not all(isinstance(n, int) and n > 0 for n in (hidden, layers, heads)):
        return 0
    head_dim = text.get("head_dim") or hidden // heads
    kv = text.get("num_key_value_heads") or heads
    inter = text.get("intermediate_size") or 4 * hidden
    dims = {
        "q_proj": hidden + heads * head_dim,
        "k_proj": hidden + kv * head_dim,
        "v_proj": hidden + kv * head_dim,
        "o_proj": heads * head_dim + hidden,
        "gate_proj": hidden + inter,
        "up_proj": hidden + inter,
        "down_proj": inter + hidden,
    }
    packed = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    targets = set(args.get("lora_target_modules") or dims)
    for parent, children in packed.items():
        if parent in targets:
            targets.update(children)
    per_rank = sum(size for name, size in dims.items() if name in targets)
    rank = int(args.get("max_lora_rank") or 16)
    slots = int(args.get("max_loras") or 1)
    if cpu:
        slots += int(args.get("max_cpu_loras") or slots)
    return int(layers * per_rank * rank * slots * 2)


class EngineAdapters:
    """One engine's adapters: the id vLLM knows each by, which it has loaded, which it holds now."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}  # (name, path) -> id: a re-imported adapter gets a new one
        self._loaded: set[int] = set()
        self._loads: dict[int, asyncio.Task[None]] = {}
        self.held: list[str] = []

    def request(self, adapter: Adapter) -> Any:
        from vllm.lora.request import LoRARequest

        key = (adapter.name, adapter.path)
        lora_id = self._ids.setdefault(key, len(self._ids) + 1)
        return LoRARequest(lora_name=adapter.name, lora_int_id=lora_id, lora_path=adapter.path)

    async def ensure(self, llm: Any, request: Any) -> None:
        """Load the adapter into the engine before its first request: a bad adapter is a clear error here, where
        a load inside the engine's step would fail the whole batch. Requests for one adapter share one load."""
        if request.lora_int_id in self._loaded:
            return
        task = self._loads.get(request.lora_int_id)
        if task is None:
            task = self._loads[request.lora_int_id] = asyncio.ensure_future(self._load(llm, request))
        await asyncio.shield(task)

    async def _load(self, llm: Any, request: Any) -> None:
        began = time.perf_counter()
        try:
            await llm.add_lora(request)
        except Exception as exc:
            raise InvalidInput(
                f"adapter {request.lora_name} could not be loaded: {exc}", param="model", code="adapter_load_failed"
            ) from exc
        finally:
            self._loads.pop(request.lora_int_id, None)
        self._loaded.add(request.lora_int_id)
        log.info("adapter.loaded", adapter=request.lora_name, seconds=round(time.perf_counter() - began, 3))

    async def refresh(self, llm: Any) -> None:
        ids = set(await llm.list_loras())
        names = {lora_id: name for (name, _), lora_id in self._ids.items()}
        self._loaded &= ids  # evicted ones are loaded again (checked) on their next request
        self.held = sorted(names[i] for i in ids if i in names)


class AdapterView:
    """An engine as one of its adapters (`EngineClient`): requests generate with the adapter; everything else
    (tokenizer, template, limits, parsers) is the base engine's."""

    def __init__(self, engine: VllmEngine, adapter: Adapter, request: Any) -> None:
        self._engine = engine
        self.adapter = adapter
        self.request = request

    @property
    def served_name(self) -> str:
        return self.adapter.name

    @property
    def model_path(self) -> Path:
        return self._engine.model_path

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    @property
    def max_prompt_chars(self) -> int:
        return self._engine.max_prompt_chars

    @property
    def chat(self) -> bool:
        return self._engine.chat

    @property
    def tool_call_parser(self) -> str | None:
        return self._engine.tool_call_parser

    @property
    def reasoning_parser(self) -> str | None:
        return self._engine.reasoning_parser

    @property
    def embedding(self) -> bool:
        return self._engine.embedding

    def encode(self, text: str) -> list[int]:
        return self._engine.encode(text)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        return self._engine.render_chat(messages, tools, template_kwargs)

    def reasoning(self, prompt_ids: list[int]) -> Reasoning | None:
        return self._engine.reasoning(prompt_ids)

    def tool_calls(self, tools: list[dict[str, Any]], tool_choice: Any, parallel: bool) -> ToolCalls:
        return self._engine.tool_calls(tools, tool_choice, parallel)

    def decode_token(self, token_id: int) -> str:
        return self._engine.decode_token(token_id)

    def decode(self, token_ids: list[int]) -> str:
        return self._engine.decode(token_ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self._engine.token_bytes(token_id)

    def sampling_params(self, params: Mapping[str, Any], *, whole: bool = False) -> object:
        return self._engine.sampling_params(params, whole=whole)

    def generate(
        self, prompt_ids: list[int], prompt_text: str | None, params: object, request_id: str, priority: int = 0
    ) -> AsyncGenerator[EngineOutput, None]:
        return self._engine.generate(prompt_ids, prompt_text, params, request_id, priority, lora=self.request)

    async def embed(self, prompt_ids: list[int], dimensions: int | None, request_id: str) -> list[float]:
        raise InvalidInput(
            f"{self.adapter.name} is a LoRA adapter: adapters generate, they do not embed", param="model"
        )

    async def abort(self, request_ids: Sequence[str]) -> None:
        await self._engine.abort(request_ids)
