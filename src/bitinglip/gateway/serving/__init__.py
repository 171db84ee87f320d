"""OpenAI chat and text completions over the engines (no Litestar here); `OpenAIServing` is what the routes call."""

from __future__ import annotations

import time

from bitinglip.cluster import EngineLookup
from bitinglip.core import GatewaySettings
from bitinglip.gateway import protocol as p
from bitinglip.gateway.serving.base import Admission, Prepared, Serving
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.completion import CompletionServing


class OpenAIServing:
    def __init__(self, engines: EngineLookup, settings: GatewaySettings) -> None:
        self.engines = engines
        self.admission = Admission(settings)
        self.chat = ChatServing(engines)
        self.completion = CompletionServing(engines)

    def list_models(self) -> p.ModelList:
        cards = []
        for name in self.engines.served_models():
            engine = self.engines.engine_for(name)
            cards.append(
                p.ModelCard(
                    id=name, created=int(time.time()), max_model_len=engine.max_model_len, root=str(engine.model_path)
                )
            )
        return p.ModelList(data=cards)


__all__ = ["Admission", "ChatServing", "CompletionServing", "OpenAIServing", "Prepared", "Serving"]
