"""Every error as OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`, never a bare 500."""

from __future__ import annotations

from http import HTTPStatus

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from bitinglip.core.errors import BitingLipError
from bitinglip.core.logging import get_logger
from bitinglip.gateway.protocol import error_response

log = get_logger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def _response(
    status: int, message: str, type_: str, param: str | None, code: str | None, retry_after: int | None = None
) -> Response[bytes]:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = msgspec.json.encode(error_response(message, type_, param, code))
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def handle_error(request: Request, exc: Exception) -> Response[bytes]:
    if isinstance(exc, BitingLipError):
        return _response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.retry_after)
    if isinstance(exc, ValidationException):
        return _response(400, f"invalid request: {exc.detail}", "invalid_request_error", None, "invalid_value")
    if isinstance(exc, HTTPException):
        status = exc.status_code
        code = HTTPStatus(status).phrase.lower().replace(" ", "_")
        message = exc.detail or HTTPStatus(status).phrase
        if status == 404:
            message = f"no route {request.method} {request.url.path}"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return _response(
            status,
            message,
            _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            None,
            code,
        )
    log.exception("request.unhandled_error", error=f"{type(exc).__name__}: {exc}")
    return _response(
        500,
        "internal server error; the request id in X-Request-ID finds it in the logs",
        "server_error",
        None,
        "internal_error",
    )
