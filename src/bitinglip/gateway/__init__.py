"""The OpenAI-compatible HTTP edge: protocol types, serving, routes, errors."""

from bitinglip.gateway.plugin import GatewayPlugin
from bitinglip.gateway.serving import OpenAIServing

__all__ = ["GatewayPlugin", "OpenAIServing"]
