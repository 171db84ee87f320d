"""`/v1/models`: the served models and what each can do."""

from __future__ import annotations

from typing import Literal

import msgspec


class ModelCapabilities(msgspec.Struct, kw_only=True):
    """What a model serves here; null until an engine has loaded it (its tokenizer and deployment say)."""

    chat: bool | None
    completions: bool | None = True
    tools: bool | None = False  # tool calls parsed (its deployment names a tool_call_parser)
    reasoning: bool | None = False  # reasoning given apart from the answer (its deployment names a reasoning_parser)
    structured_outputs: bool | None = True
    embeddings: bool | None = False


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "bitinglip"
    object: Literal["model"] = "model"
    max_model_len: int | None = None  # the context length, once an engine has loaded it
    root: str | None = None
    parent: str | None = None  # a LoRA adapter's base model, as `vllm serve` lists its adapters
    # "ready", "loading", "sleeping", "stopped", "failed" for a deployment; "on_demand": loads when asked for.
    status: str | None = None
    capabilities: ModelCapabilities | None = None


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: Literal["list"] = "list"
