"""Settings, database, logging and domain errors. Imports nothing else of bitinglip."""

from bitinglip.core.db import Database, metadata
from bitinglip.core.errors import (
    BitingLipError,
    Conflict,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    SettingsError,
    Unauthorized,
    Unavailable,
)
from bitinglip.core.logging import configure_logging, get_logger
from bitinglip.core.plugin import CorePlugin
from bitinglip.core.settings import LoadedSettings, Settings, describe, load_settings

__all__ = [
    "BitingLipError",
    "Conflict",
    "CorePlugin",
    "Database",
    "InsufficientStorage",
    "InvalidInput",
    "LoadedSettings",
    "NotFound",
    "Settings",
    "SettingsError",
    "Unauthorized",
    "Unavailable",
    "configure_logging",
    "describe",
    "get_logger",
    "load_settings",
    "metadata",
]
