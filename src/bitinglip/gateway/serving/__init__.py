"""OpenAI's codecs (chat, text completions, embeddings, responses: how each prepares its request and renders the
engine's output) and its model list; no Litestar here. The pipeline (pipeline.py) runs them."""

from __future__ import annotations

import time
from typing import Literal

from bitinglip.cluster import EngineLookup, ServedModel
from bitinglip.gateway.protocol.models import ModelCapabilities, ModelCard, ModelList
from bitinglip.gateway.protocol.sampling import NO_OUTPUT_LIMITS, OutputLimits
from bitinglip.gateway.response_store import ResponseStore
from bitinglip.gateway.serving.base import Codec, Prepared, Serving, Tally
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.completion import CompletionServing
from bitinglip.gateway.serving.embeddings import EmbeddingServing
from bitinglip.gateway.serving.messages import MessagesServing
from bitinglip.gateway.serving.responses import ResponsesServing


def _capabilities(m: ServedModel) -> ModelCapabilities:
    generates = None if m.embedding is None else not m.embedding
    return ModelCapabilities(
        chat=m.chat,
        completions=generates,
        tools=m.tools,
        reasoning=m.reasoning,
        structured_outputs=generates,
        embeddings=m.embedding,
    )


class OpenAIServing:
    def __init__(
        self,
        engines: EngineLookup,
        store: ResponseStore,
        stream_interval: int | Literal["auto"] = "auto",
        limits: OutputLimits = NO_OUTPUT_LIMITS,
    ) -> None:
        self.engines = engines
        self.chat = ChatServing(stream_interval, limits)
        self.completion = CompletionServing(stream_interval, limits)
        self.embeddings = EmbeddingServing()
        self.messages = MessagesServing(self.chat)  # Anthropic's Messages API, built on chat
        self.responses = ResponsesServing(self.chat, store)  # OpenAI's Responses API, built on chat

    def codecs(self) -> dict[str, Codec]:
        """The codecs by the name their routes declare (`generation_post`)."""
        return {
            "chat": self.chat,
            "completion": self.completion,
            "embeddings": self.embeddings,
            "messages": self.messages,
            "responses": self.responses,
        }

    async def list_models(self) -> ModelList:
        created = int(time.time())
        return ModelList(
            data=[
                ModelCard(
                    id=m.name,
                    created=created,
                    max_model_len=m.max_model_len,
                    root=m.path,
                    parent=m.parent,
                    status=m.state,
                    capabilities=_capabilities(m),
                )
                for m in await self.engines.served_models()
            ]
        )


__all__ = [
    "ChatServing",
    "Codec",
    "CompletionServing",
    "EmbeddingServing",
    "MessagesServing",
    "OpenAIServing",
    "Prepared",
    "ResponsesServing",
    "Serving",
    "Tally",
]
