"""The OpenAI-compatible edge: wire types, serving (chat, completions, logprobs), routes; API keys, limits,
usage and metrics."""

from bitinglip.gateway.accounting import Accounting
from bitinglip.gateway.auth import Authenticator, auth_enabled
from bitinglip.gateway.keys import ApiKey, KeyCreate, KeyStore, KeyView, NewKey, view
from bitinglip.gateway.limits import LimitStore, MemoryLimitStore
from bitinglip.gateway.metrics import Metrics, deployment_families, pull_families, task_families
from bitinglip.gateway.plugin import GatewayPlugin
from bitinglip.gateway.serving import OpenAIServing
from bitinglip.gateway.usage import UsageRecorder, UsageReport, UsageRow

__all__ = [
    "Accounting",
    "ApiKey",
    "Authenticator",
    "GatewayPlugin",
    "KeyCreate",
    "KeyStore",
    "KeyView",
    "LimitStore",
    "MemoryLimitStore",
    "Metrics",
    "NewKey",
    "OpenAIServing",
    "UsageRecorder",
    "UsageReport",
    "UsageRow",
    "auth_enabled",
    "deployment_families",
    "pull_families",
    "task_families",
    "view",
]
