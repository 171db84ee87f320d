"""Routes: API keys (`/api/keys`, admin keys only), usage (`/api/usage`) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, KwargDefinition
from prometheus_client import CONTENT_TYPE_LATEST

from bitinglip.core import InvalidInput, Unauthorized, error_responses
from bitinglip.gateway.accounting import Accounting
from bitinglip.gateway.auth import Authenticator, request_token
from bitinglip.gateway.keys import ApiKey, KeyCreate, KeyList, KeyStore, KeyView, NewKey, view
from bitinglip.gateway.metrics import Metrics
from bitinglip.gateway.usage import UsageRecorder, UsageReport


class KeysController(Controller):
    path = "/api/keys"
    tags = ("keys",)

    @post(
        "/",
        operation_id="createKey",
        summary="Make an API key; the key itself is in this answer only",
        status_code=201,
        responses=error_responses(400),
    )
    async def create(self, keys: NamedDependency[KeyStore], data: JSONBody[KeyCreate]) -> NewKey:
        return await keys.create(data)

    @get(
        "/",
        operation_id="listKeys",
        summary="The API keys (never the keys themselves) with their limits' headroom now; revoked ones on request",
    )
    async def list_keys(
        self,
        keys: NamedDependency[KeyStore],
        accounting: NamedDependency[Accounting],
        include_revoked: FromQuery[bool] = False,
    ) -> KeyList:
        found = await keys.list(include_revoked=include_revoked)
        return KeyList(data=[view(k, accounting.headroom(k)) for k in found])

    @get("/{key:str}", operation_id="getKey", summary="One API key, by id or name", responses=error_responses(404))
    async def get_key(
        self, keys: NamedDependency[KeyStore], accounting: NamedDependency[Accounting], key: FromPath[str]
    ) -> KeyView:
        found = await keys.find(key)
        return view(found, accounting.headroom(found))

    @delete(
        "/{key:str}",
        operation_id="revokeKey",
        summary="Revoke an API key (at once in this server; within gateway.key_cache_s in others)",
        status_code=200,
        responses=error_responses(404, 409),
    )
    async def revoke(
        self, keys: NamedDependency[KeyStore], auth: NamedDependency[Authenticator | None], key: FromPath[str]
    ) -> KeyView:
        revoked = await keys.revoke(key)
        if auth is not None:
            auth.forget(revoked.id)
        return view(revoked)


def _day(value: str | None, param: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"`{param}` must be a date like 2026-11-24, got {value!r}", param=param) from None


class UsageController(Controller):
    path = "/api/usage"
    tags = ("usage",)

    @get(
        "/",
        operation_id="getUsage",
        summary="Requests, tokens and errors per key, model and UTC day; an inference key sees its own",
        responses=error_responses(400),
    )
    async def usage(
        self,
        usage: NamedDependency[UsageRecorder],
        request: Request[Any, Any, Any],
        key_id: FromQuery[str | None] = None,
        model: FromQuery[str | None] = None,
        start: FromQuery[str | None] = None,
        end: FromQuery[str | None] = None,
    ) -> UsageReport:
        caller: ApiKey | None = request.scope["state"].get("key")
        if caller is not None and caller.scope != "admin":
            key_id = caller.id
        return await usage.report(key_id=key_id, model=model, start=_day(start, "start"), end=_day(end, "end"))


class Caller(msgspec.Struct, kw_only=True):
    """Who a request's key is, for sign-in pages: answered without a key, never as an error."""

    auth: bool  # whether this server asks for keys; when it does not, every caller may do everything
    scope: Literal["admin", "inference"] | None  # None: no key, or one that is refused (`reason` says why)
    key: KeyView | None = None
    reason: str | None = None


@get(
    "/api/me",
    operation_id="whoAmI",
    tags=["keys"],
    summary="The scope, limits and headroom of the key sent (no key: says whether one is needed); never a 401",
)
async def who_am_i(
    request: Request[Any, Any, Any],
    auth: NamedDependency[Authenticator | None],
    accounting: NamedDependency[Accounting],
) -> Caller:
    if auth is None:
        return Caller(auth=False, scope="admin")
    try:
        key = await auth.authenticate(request_token(request.scope))
    except Unauthorized as refused:
        return Caller(auth=True, scope=None, reason=refused.message)
    return Caller(auth=True, scope=key.scope, key=view(key, accounting.headroom(key)))


MetricsText = Annotated[str, KwargDefinition(description="Prometheus's text exposition format")]


@get(
    "/metrics",
    operation_id="metrics",
    tags=["health"],
    summary="Prometheus metrics (text format), every name prefixed bitinglip_",
    include_in_schema=True,
    responses={
        200: ResponseSpec(
            data_container=MetricsText,
            media_type=CONTENT_TYPE_LATEST,
            description="Every metric, as a Prometheus server scrapes it",
            generate_examples=False,
        )
    },
)
async def metrics_route(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)
