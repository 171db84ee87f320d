"""The OpenAI-compatible edge: the generation pipeline every request goes through, wire types, codecs (chat,
completions, embeddings, responses), routes; API keys, limits, usage and metrics."""

from bitinglip.gateway.accounting import Accounting
from bitinglip.gateway.aliases import ModelAliases
from bitinglip.gateway.auth import Authenticator, auth_enabled
from bitinglip.gateway.background import Background
from bitinglip.gateway.forward import Forwarder
from bitinglip.gateway.keys import ApiKey, KeyCreate, KeyStore, KeyView, NewKey, view
from bitinglip.gateway.limits import LimitStore, MemoryLimitStore
from bitinglip.gateway.metrics import Metrics, deployment_families, pull_families, task_families
from bitinglip.gateway.pipeline import Call, Pipeline
from bitinglip.gateway.plugin import GatewayPlugin
from bitinglip.gateway.protocol.sampling import OutputLimits
from bitinglip.gateway.response_store import ResponseStore
from bitinglip.gateway.serving import OpenAIServing
from bitinglip.gateway.shared_limits import SharedLimitStore
from bitinglip.gateway.usage import UsageRecorder, UsageReport, UsageRow
from bitinglip.gateway.vouch import Vouches

__all__ = [
    "Accounting",
    "ApiKey",
    "Authenticator",
    "Background",
    "Call",
    "Forwarder",
    "GatewayPlugin",
    "KeyCreate",
    "KeyStore",
    "KeyView",
    "LimitStore",
    "MemoryLimitStore",
    "Metrics",
    "ModelAliases",
    "NewKey",
    "OpenAIServing",
    "OutputLimits",
    "Pipeline",
    "ResponseStore",
    "SharedLimitStore",
    "UsageRecorder",
    "UsageReport",
    "UsageRow",
    "Vouches",
    "auth_enabled",
    "deployment_families",
    "pull_families",
    "task_families",
    "view",
]
