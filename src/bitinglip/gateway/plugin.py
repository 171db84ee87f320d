"""Mounts the OpenAI-compatible routes, keys, usage and /metrics, and the key check when auth is on."""

from __future__ import annotations

from typing import Any

from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPlugin

from bitinglip.gateway.admin import KeysController, UsageController, metrics_route, who_am_i
from bitinglip.gateway.anthropic import AnthropicController
from bitinglip.gateway.api import OpenAIController
from bitinglip.gateway.auth import Authenticator, AuthMiddleware
from bitinglip.gateway.fast import FastGeneration
from bitinglip.gateway.forward import Forwarder
from bitinglip.gateway.generation import Generation
from bitinglip.gateway.keys import KeyStore
from bitinglip.gateway.pipeline import Pipeline
from bitinglip.gateway.responses import ResponsesController
from bitinglip.gateway.serving import OpenAIServing
from bitinglip.gateway.tokenize import TokenizeController


class GatewayPlugin(InitPlugin):
    def __init__(
        self,
        openai: OpenAIServing,
        pipeline: Pipeline,
        keys: KeyStore,
        auth: Authenticator | None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self.forwarder = forwarder  # None: requests are never sent to another instance
        self.openai = openai
        self.pipeline = pipeline
        self.accounting = pipeline.accounting
        self.keys = keys
        self.auth = auth  # None: auth is off

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(
            [
                OpenAIController,
                ResponsesController,
                AnthropicController,
                TokenizeController,
                KeysController,
                UsageController,
                who_am_i,
                metrics_route,
            ]
        )
        generation = Generation(self.pipeline, self.openai.codecs())
        provided: dict[str, Any] = {
            "openai": self.openai,
            "response_store": self.openai.responses.store,
            "pipeline": self.pipeline,
            "generation": generation,
            "accounting": self.accounting,
            "usage": self.accounting.usage,
            "metrics": self.accounting.metrics,
            "keys": self.keys,
            "auth": self.auth,
        }
        for name, value in provided.items():
            app_config.dependencies[name] = Provide(_constant(value), use_cache=True, sync_to_thread=False)
        if self.auth is not None:
            # Route middleware: it runs on every matched route (the OpenAPI docs too), before the body is read.
            app_config.middleware.append(
                DefineMiddleware(AuthMiddleware, auth=self.auth, rate_headers=self.accounting.rate_headers)
            )
        # Inside the key check (its rate-limit headers reach these responses too): the generation routes' hot path.
        app_config.middleware.append(DefineMiddleware(FastGeneration, generation=generation, forwarder=self.forwarder))
        return app_config


def _constant(value: Any) -> Any:
    def provide() -> Any:
        return value

    return provide
