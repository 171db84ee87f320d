"""Domain errors shared by every module.

Each error carries the HTTP status and the OpenAI-style ``type``/``code``/``param`` it maps to, so the
gateway and the admin API can render it without knowing where it came from.
"""

from __future__ import annotations

import re


class BitingLipError(Exception):
    """Base of every error the project raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class InvalidInput(BitingLipError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class Unauthorized(BitingLipError):
    status = 401
    type = "authentication_error"
    code = "unauthorized"


class Forbidden(BitingLipError):
    """A valid key that may not do this (its scope) or use this model."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class RateLimited(BitingLipError):
    """Over a key's (or a model's) limit; ``headers`` carry OpenAI's x-ratelimit-* values."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class NotFound(BitingLipError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(BitingLipError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class InsufficientStorage(BitingLipError):
    status = 507
    type = "insufficient_storage"
    code = "insufficient_storage"


class Unavailable(BitingLipError):
    status = 503
    type = "service_unavailable"
    code = "unavailable"


class SettingsError(BitingLipError):
    """A setting has a wrong type, an unknown key or a bad value; raised before anything starts."""

    code = "bad_setting"


def validation_path(message: str) -> tuple[str, str]:
    """Split msgspec's "Expected `int`, got `str` - at `$.messages[0].role`" into ("messages.0.role", "Expected
    `int`, got `str`"); the path is "" when the message names none."""
    match = re.match(r"(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", message, re.DOTALL)
    assert match is not None  # the pattern matches any text
    return re.sub(r"\[(\d+)\]", r".\1", (match["path"] or "").lstrip(".")), match["msg"]
