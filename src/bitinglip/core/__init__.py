"""Settings, database, logging, domain errors and the HTTP edge every route shares.

Imports nothing else of bitinglip.

The errors and `parse_duration` are imported with the package; every other name is imported from its module on
first use (PEP 562 `__getattr__`). The CLI needs only the errors and, for most commands, the settings: importing
the database (SQLAlchemy) and the HTTP edge (Litestar) with them took 0.4 s of every `bitinglip` command's start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # what mypy sees; at run time `__getattr__` imports these (tests/unit/core/test_lazy_core.py)
    from bitinglip.core.db import Database, metadata
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
    from bitinglip.core.layers import describe, home_dir, is_secret, load_settings
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
    )

# name -> (module under bitinglip.core, its name there): each imported on first use.
_LAZY: dict[str, tuple[str, str]] = {
    **{name: ("db", name) for name in ("Database", "metadata")},
    **{name: ("events", name) for name in ("Events", "FinalEvent")},
    "Feed": ("feed", "Feed"),
    "settle_heap": ("heap", "settle"),
    **{
        name: ("http", name)
        for name in (
            "EVENT_STREAM",
            "RESPONSE_HEADERS",
            "AnthropicErrorResponse",
            "ErrorBody",
            "ErrorResponse",
            "anthropic_error",
            "error_response",
            "error_responses",
            "handle_error",
        )
    },
    **{
        name: ("litestar_internals", name)
        for name in ("EventStream", "handler_body_limit", "route_handler_of", "send_error", "skipped_by_bypass")
    },
    **{name: ("logging", name) for name in ("configure_logging", "get_logger")},
    "CorePlugin": ("plugin", "CorePlugin"),
    **{
        name: ("settings", name)
        for name in (
            "ClusterSettings",
            "DbSettings",
            "DeploymentSettings",
            "GatewaySettings",
            "LimitSettings",
            "LoadedSettings",
            "ModelsSettings",
            "ServerSettings",
            "Settings",
            "TasksSettings",
        )
    },
    **{name: ("layers", name) for name in ("describe", "home_dir", "is_secret", "load_settings")},
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = where
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value  # the next lookup is a plain global, not a call
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
    "home_dir",
    "is_secret",
    "load_settings",
    "metadata",
    "parse_duration",
    "route_handler_of",
    "send_error",
    "settle_heap",
    "skipped_by_bypass",
    "validation_path",
]
