"""Routes: API keys (`/api/keys`, admin keys only), usage (`/api/usage`) and Prometheus metrics (`/metrics`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, KwargDefinition
from prometheus_client import CONTENT_TYPE_LATEST

from bitinglip.core import InvalidInput, error_responses
from bitinglip.gateway.auth import Authenticator
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

    @get("/", operation_id="listKeys", summary="The API keys (never the keys themselves); revoked ones on request")
    async def list_keys(self, keys: NamedDependency[KeyStore], include_revoked: FromQuery[bool] = False) -> KeyList:
        return KeyList(data=[view(k) for k in await keys.list(include_revoked=include_revoked)])

    @get("/{key:str}", operation_id="getKey", summary="One API key, by id or name", responses=error_responses(404))
    async def get_key(self, keys: NamedDependency[KeyStore], key: FromPath[str]) -> KeyView:
        return view(await keys.find(key))

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
