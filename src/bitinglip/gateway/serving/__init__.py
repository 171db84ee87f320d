"""OpenAI chat and text completions over the engines (no Litestar here); `OpenAIServing` is what the routes call."""

from __future__ import annotations

import time
from typing import Literal

from bitinglip.cluster import EngineLookup, Lease, ServedModel
from bitinglip.core import InvalidInput
from bitinglip.gateway.protocol.models import ModelCapabilities, ModelCard, ModelList
from bitinglip.gateway.serving.background import Background
from bitinglip.gateway.serving.base import Prepared, Serving, Tally
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.completion import CompletionServing
from bitinglip.gateway.serving.embeddings import EmbeddingServing


def _capabilities(m: ServedModel) -> ModelCapabilities:
    generates = None if m.embedding is None else not m.embedding
    return ModelCapabilities(
        chat=m.chat, completions=generates, tools=m.tools, structured_outputs=generates, embeddings=m.embedding
    )


class OpenAIServing:
    def __init__(self, engines: EngineLookup, stream_interval: int | Literal["auto"] = "auto") -> None:
        self.engines = engines
        self.chat = ChatServing(stream_interval)
        self.completion = CompletionServing(stream_interval)
        self.embeddings = EmbeddingServing()
        # The task kinds ("chat", "completion") the app registers with the task queue.
        self.background = Background(self.acquire, self.chat, self.completion)

    async def acquire(self, model: str | None, keep_alive: float | str | None, *, background: bool = False) -> Lease:
        """A hold on an engine serving ``model`` (loading it first if need be); release it when the response ends."""
        if not model:
            raise InvalidInput("you must provide a model parameter", param="model", code="missing_model")
        return await self.engines.acquire(model, keep_alive, background=background)

    async def list_models(self) -> ModelList:
        created = int(time.time())
        return ModelList(
            data=[
                ModelCard(
                    id=m.name,
                    created=created,
                    max_model_len=m.max_model_len,
                    root=m.path,
                    status=m.state,
                    capabilities=_capabilities(m),
                )
                for m in await self.engines.served_models()
            ]
        )


__all__ = [
    "Background",
    "ChatServing",
    "CompletionServing",
    "EmbeddingServing",
    "OpenAIServing",
    "Prepared",
    "Serving",
    "Tally",
]
