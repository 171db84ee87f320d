"""The HTTP edge every route shares, whichever modules are mounted.

- OpenAI's error envelope `{"error": {"message", "type", "param", "code"}}` for every error on every route
  (`/v1` and `/api` alike), from one exception handler: nothing escapes as a bare 500.
- Request ids (`X-Request-ID`, taken when sane or made), bound to every log line of the request, echoed
  back, and one access-log line per request, as plain ASGI middleware (nothing per streamed chunk).
- `GET /health`, and helpers that make the OpenAPI schema describe errors and event streams.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Literal, cast

import msgspec
import structlog
from litestar import Litestar, Request, Response, get, head
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Reference, Schema
from litestar.response import Redirect
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from bitinglip.core.errors import BitingLipError
from bitinglip.core.events import SERVER_SEND
from bitinglip.core.logging import get_logger

log = get_logger("bitinglip.access")

REQUEST_ID_HEADER = b"x-request-id"
# Headers a route adds to its response however it is sent (a handler, the hot path, a stream), in scope["state"].
RESPONSE_HEADERS = "response_headers"
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
QUIET_PATHS = frozenset({"/health", "/ready"})
# A route handler's `opt` key naming the msgspec type each `data:` event of its text/event-stream carries.
EVENT_STREAM = "event_stream"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct):
    """OpenAI's error envelope; every error of every route has this shape."""

    error: ErrorBody


def error_response(message: str, type_: str, param: str | None = None, code: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))


def _respond(
    status: int, message: str, type_: str, param: str | None, code: str | None, retry_after: int | None = None
) -> Response[ErrorResponse]:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return Response(error_response(message, type_, param, code), status_code=status, headers=headers)


def _validation_error(exc: ValidationException) -> Response[ErrorResponse]:
    """Litestar's request validation (msgspec) as a 400 naming the field, as `messages.0.role`."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = problems[0] if problems and isinstance(problems[0], Mapping) else {}
    key = str(first.get("key") or "") or None
    message = str(first.get("message") or exc.detail)
    if key == "data":  # the body as a whole: missing, empty, or not an object
        key = None
        if message == "'data'":
            return _respond(
                400, "the request body is empty; send a JSON object", "invalid_request_error", None, "invalid_json"
            )
    param = re.sub(r"\[(\d+)\]", r".\1", key) if key else None
    if unknown := re.match(r"Object contains unknown field `([^`]+)`", message):
        # A field we do not serve: refused by name rather than accepted and dropped.
        param = f"{param}.{unknown[1]}" if param else unknown[1]
        text = f"`{param}` is not supported by this server; remove it from the request"
        return _respond(400, text, "invalid_request_error", param, "unsupported_parameter")
    text = f"invalid request: {message}" + (f" - at `{param}`" if param else "")
    return _respond(400, text, "invalid_request_error", param, "invalid_value")


# Anthropic's Messages API answers its errors in its own envelope, with its own type names (by status).
ANTHROPIC_PATHS = "/v1/messages"
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class AnthropicErrorBody(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorResponse(msgspec.Struct):
    """Anthropic's error envelope: every error on /v1/messages has this shape."""

    error: AnthropicErrorBody
    type: str = "error"


def anthropic_error(status: int, message: str) -> AnthropicErrorResponse:
    type_ = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return AnthropicErrorResponse(error=AnthropicErrorBody(type=type_, message=message))


def handle_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Every error of every route as a response: OpenAI's envelope, Anthropic's on its routes."""
    response = _openai_error(request, exc)
    if request.scope["path"].startswith(ANTHROPIC_PATHS):
        body: ErrorResponse = response.content
        anthropic = anthropic_error(response.status_code or 500, body.error.message)
        return Response(anthropic, status_code=response.status_code, headers=response.headers)
    return response


def _openai_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    if isinstance(exc, BitingLipError):
        return _respond(exc.status, exc.message, exc.type, exc.param, exc.code, exc.retry_after)
    if isinstance(exc, ValidationException):
        return _validation_error(exc)
    if isinstance(exc, RecursionError):
        # Only input nests this deep: msgspec decoding a JSON body (or a schema in it) past Python's recursion limit.
        return _respond(
            400, "the request body is nested too deeply; flatten it", "invalid_request_error", None, "invalid_json"
        )
    if isinstance(exc, HTTPException):
        status = exc.status_code
        code = HTTPStatus(status).phrase.lower().replace(" ", "_")
        message = exc.detail or HTTPStatus(status).phrase
        if status == 404:
            message = f"no route {request.method} {request.url.path}"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif status == 400 and "JSON is malformed" in message:
            message, code = f"the request body is not valid JSON: {message}", "invalid_json"
        type_ = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return _respond(status, message, type_, None, code)
    log.exception("request.unhandled_error", error=f"{type(exc).__name__}: {exc}")
    return _respond(
        500,
        "internal server error; the request id in X-Request-ID finds it in the logs",
        "server_error",
        None,
        "internal_error",
    )


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route answers, all in the one envelope."""
    return {
        status: ResponseSpec(
            data_container=ErrorResponse, description=HTTPStatus(status).phrase, generate_examples=False
        )
        for status in statuses
    }


def complete_openapi(app: Litestar) -> None:
    """Finish the OpenAPI document Litestar built (once, at start-up), where Litestar cannot say it itself.

    - Errors: Litestar documents its own validation 400 in its own shape; every error status of every
      operation is described as what is really sent, the one envelope (`ErrorResponse`; Anthropic's,
      `AnthropicErrorResponse`, under /v1/messages).
    - Event streams: Litestar describes one media type per status; a route that answers JSON, or events when
      asked, gets `text/event-stream` beside its JSON, with the event's schema (a route's `opt[EVENT_STREAM]`).
    """
    openapi = app.openapi_schema
    if openapi.paths is None:
        return
    streams: dict[tuple[str, str], type[msgspec.Struct]] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if (event := handler.opt.get(EVENT_STREAM)) is not None:
                for method in handler.http_methods:
                    streams[(route.path_format or "/", method.lower())] = event
    _, components = msgspec.json.schema_components(
        [ErrorResponse, AnthropicErrorResponse, *set(streams.values())], ref_template="#/components/schemas/{name}"
    )
    schemas = cast(dict[str, Any], openapi.components.schemas)
    for name, schema in components.items():
        schemas.setdefault(name, schema)  # msgspec's JSON schema, kept as a plain dict
    openai_envelope = OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{ErrorResponse.__name__}"))
    anthropic_envelope = OpenAPIMediaType(
        schema=Reference(ref=f"#/components/schemas/{AnthropicErrorResponse.__name__}")
    )
    for path, item in openapi.paths.items():
        envelope = anthropic_envelope if path.startswith(ANTHROPIC_PATHS) else openai_envelope
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None or not operation.responses:
                continue
            for status, response in operation.responses.items():
                if isinstance(response, Reference):
                    continue
                if status.isdigit() and int(status) >= 400:
                    response.content = {"application/json": envelope}
                elif status == "200" and (event := streams.get((path, method))) is not None:
                    # Keep the JSON body of a route that answers JSON too; an events-only route has none.
                    response.content = {
                        media: body
                        for media, body in (response.content or {}).items()
                        if isinstance(body.schema, Reference) or (body.schema is not None and body.schema.type)
                    }
                    response.content["text/event-stream"] = OpenAPIMediaType(
                        schema=Schema(
                            description=f"server-sent events; each `data:` line is a {event.__name__} (JSON)",
                            all_of=[Reference(ref=f"#/components/schemas/{event.__name__}")],
                        )
                    )


class Health(msgspec.Struct):
    status: Literal["ok"] = "ok"


@get("/health", operation_id="health", tags=["health"], summary="The process is alive")
async def health() -> Health:
    return Health()


class Root(msgspec.Struct):
    name: Literal["bitinglip"] = "bitinglip"
    docs: str = "/schema"
    ui: str | None = None  # the web dashboard, where one is mounted


def root_route(home: str | None) -> HTTPRouteHandler:
    """`GET /`: a browser (it asks for HTML) is sent to ``home``, the dashboard; any other client gets JSON."""

    @get(
        "/",
        operation_id="root",
        tags=["health"],
        summary="The server answers: its name and where its API docs and dashboard are (browsers go there)",
        responses={302: ResponseSpec(None, description="To the dashboard, for a client that asks for text/html")},
    )
    async def root(request: Request[Any, Any, Any]) -> Response[Root]:
        if home is not None and "text/html" in request.headers.get("accept", ""):
            return Redirect(home)
        return Response(Root(ui=home))

    return root


@head("/", operation_id="rootHead", tags=["health"], summary="The server answers (coding agents probe `HEAD /`)")
async def root_head() -> None:
    return None


# Called once per request when its response has ended: (scope, status, seconds). Metrics hook in here.
Observer = Callable[[Scope, int, float], None]


class RequestIdMiddleware:
    """Request id in, request id out, one access line per request. Plain ASGI: no work per streamed chunk.

    Routes add their own fields to the access line through ``scope["state"]["log"]`` (the gateway: key id,
    model, tokens, time to first token), so a request is one line, however it ended.
    """

    def __init__(self, app: ASGIApp, access_log: bool = True, observers: Sequence[Observer] = ()) -> None:
        self.app = app
        self.access_log = access_log
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None)
        request_id = given.decode() if given and _SANE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state[SERVER_SEND] = send  # an event stream sends its events here, past every wrapper (core/events.py)
        method = scope.get("method", "")
        started = state["started"] = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
                if extra := state.get(RESPONSE_HEADERS):
                    headers.extend(extra)
                message["headers"] = headers
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            for observe in self.observers:
                observe(scope, status, seconds)
            if self.access_log and scope["path"] not in QUIET_PATHS:
                log.info(
                    "http.request",
                    method=method,
                    path=scope["path"],
                    status=status,
                    ms=round(seconds * 1000, 1),
                    **state.get("log", {}),
                )
            structlog.contextvars.unbind_contextvars("request_id")
