"""Admin routes for the model registry and hub pulls under /api/models: thin, they call ModelService.

Static segments (``search``, ``pulls``, ``import``) win over ``{name:path}`` in Litestar's router, so model
names with a slash (``org/name``) and these routes live side by side; tests/unit/models/test_api.py checks it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from litestar import Response, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from bitinglip.models.pulls import FINISHED
from bitinglip.models.service import ModelService

EVENT_EVERY_S = 1.0
RESOLVE_WAIT_S = 30.0


class PullRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str  # org/name[@revision]
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None


class ImportRequest(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    name: str | None = None


def _json(value: Any, status: int = 200) -> Response[bytes]:
    return Response(content=msgspec.json.encode(value), status_code=status, media_type="application/json")


def model_routes(service: ModelService) -> list[Any]:
    @get("/api/models", operation_id="listLocalModels")
    async def list_models() -> Response[bytes]:
        return _json({"data": await service.registry.list_models()})

    @get("/api/models/search", operation_id="searchHubModels")
    async def search(
        q: FromQuery[str] = "", limit: FromQuery[int] = 20, sort: FromQuery[str] = "downloads"
    ) -> Response[bytes]:
        return _json({"data": await service.search(q, limit=limit, sort=sort)})

    @post("/api/models/pulls", operation_id="startPull", status_code=202)
    async def start_pull(data: JSONBody[PullRequest]) -> Response[bytes]:
        pull = service.pull(data.model, data.allow_patterns, data.ignore_patterns)
        # One metadata call decides whether the repo, the revision and the token are good: answer those with
        # their own status (404, 401...) rather than a 202 that fails a moment later.
        await pull.wait_resolved(RESOLVE_WAIT_S)
        if pull.state == "failed" and pull.exception is not None:
            raise pull.exception
        return _json(pull.status(), status=202)

    @get("/api/models/pulls", operation_id="listPulls")
    async def list_pulls() -> Response[bytes]:
        return _json({"data": [p.status() for p in service.pulls.list()]})

    @get("/api/models/pulls/{pull_id:str}", operation_id="showPull")
    async def show_pull(pull_id: FromPath[str]) -> Response[bytes]:
        return _json(service.pulls.get(pull_id).status())

    @delete("/api/models/pulls/{pull_id:str}", operation_id="cancelPull", status_code=200)
    async def cancel_pull(pull_id: FromPath[str]) -> Response[bytes]:
        pull = service.pulls.get(pull_id)
        await service.pulls.cancel(pull)
        return _json(pull.status())

    @get("/api/models/pulls/{pull_id:str}/events", operation_id="followPull")
    async def follow_pull(pull_id: FromPath[str]) -> ServerSentEvent:
        pull = service.pulls.get(pull_id)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            # A "progress" event about once a second, then one named after the final state, then the end.
            while True:
                status = pull.status()
                data = msgspec.json.encode(status).decode()
                if status.state in FINISHED:
                    yield ServerSentEventMessage(event=status.state, data=data)
                    return
                yield ServerSentEventMessage(event="progress", data=data)
                await pull.wait(EVENT_EVERY_S)

        return ServerSentEvent(events())

    @post("/api/models/import", operation_id="importModel", status_code=201)
    async def import_model(data: JSONBody[ImportRequest]) -> Response[bytes]:
        return _json(await service.import_dir(Path(data.path), data.name), status=201)

    @get("/api/models/{name:path}", operation_id="showLocalModel")
    async def show_model(name: FromPath[str]) -> Response[bytes]:
        return _json(await service.registry.require(name.lstrip("/")))

    @delete("/api/models/{name:path}", operation_id="removeLocalModel", status_code=200)
    async def remove_model(name: FromPath[str], force: FromQuery[bool] = False) -> Response[bytes]:
        return _json(await service.remove(name.lstrip("/"), force=force))

    return [
        list_models,
        search,
        start_pull,
        list_pulls,
        show_pull,
        cancel_pull,
        follow_pull,
        import_model,
        show_model,
        remove_model,
    ]
