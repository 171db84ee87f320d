"""The OpenAI-compatible edge: wire types, serving (chat, completions, logprobs), routes."""

from bitinglip.gateway.plugin import GatewayPlugin
from bitinglip.gateway.serving import OpenAIServing

__all__ = ["GatewayPlugin", "OpenAIServing"]
