"""Settings, database, logging, domain errors and the HTTP edge every route shares.

Imports nothing else of bitinglip.
"""

from bitinglip.core.db import Database, metadata, migration
from bitinglip.core.durations import parse_duration
from bitinglip.core.errors import (
    BitingLipError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    RateLimited,
    SettingsError,
    Unauthorized,
    Unavailable,
    validation_path,
)
from bitinglip.core.events import Events, FinalEvent
from bitinglip.core.feed import Feed
from bitinglip.core.heap import settle as settle_heap
from bitinglip.core.http import (
    EVENT_STREAM,
    RESPONSE_HEADERS,
    AnthropicErrorResponse,
    ErrorBody,
    ErrorResponse,
    anthropic_error,
    error_response,
    error_responses,
    handle_error,
)
from bitinglip.core.litestar_internals import (
    EventStream,
    handler_body_limit,
    route_handler_of,
    send_error,
    skipped_by_bypass,
)
from bitinglip.core.logging import configure_logging, get_logger
from bitinglip.core.plugin import CorePlugin
from bitinglip.core.settings import (
    ClusterSettings,
    DbSettings,
    DeploymentSettings,
    GatewaySettings,
    LimitSettings,
    LoadedSettings,
    ModelsSettings,
    ServerSettings,
    Settings,
    TasksSettings,
    describe,
    is_secret,
    load_settings,
)

__all__ = [
    "EVENT_STREAM",
    "RESPONSE_HEADERS",
    "AnthropicErrorResponse",
    "BitingLipError",
    "ClusterSettings",
    "Conflict",
    "CorePlugin",
    "Database",
    "DbSettings",
    "DeploymentSettings",
    "ErrorBody",
    "ErrorResponse",
    "EventStream",
    "Events",
    "Feed",
    "FinalEvent",
    "Forbidden",
    "GatewaySettings",
    "InsufficientStorage",
    "InvalidInput",
    "LimitSettings",
    "LoadedSettings",
    "ModelsSettings",
    "NotFound",
    "RateLimited",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "TasksSettings",
    "Unauthorized",
    "Unavailable",
    "anthropic_error",
    "configure_logging",
    "describe",
    "error_response",
    "error_responses",
    "get_logger",
    "handle_error",
    "handler_body_limit",
    "is_secret",
    "load_settings",
    "metadata",
    "migration",
    "parse_duration",
    "route_handler_of",
    "send_error",
    "settle_heap",
    "skipped_by_bypass",
    "validation_path",
]
