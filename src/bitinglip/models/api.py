"""Admin routes for the model registry and hub pulls under /api/models: thin, they call ModelService.

Static segments (``search``, ``pulls``, ``import``) win over ``{name:path}`` in Litestar's router, so model
names with a slash (``org/name``) and these routes live side by side; tests/unit/models/test_models_api.py
checks it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from bitinglip.core import EVENT_STREAM, error_responses
from bitinglip.models.pull_state import FINISHED, PullStatus
from bitinglip.models.registry import ModelRecord
from bitinglip.models.service import ModelService, SearchResult

EVENT_EVERY_S = 1.0
RESOLVE_WAIT_S = 30.0


class PullRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str  # org/name[@revision]
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None
    base: str | None = None  # a LoRA adapter's base model, where its config does not name a registered one


class ImportRequest(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    name: str | None = None
    base: str | None = None  # a LoRA adapter's base model; default: the registered model its config names


class LocalModelList(msgspec.Struct):
    data: list[ModelRecord]


class SearchResults(msgspec.Struct):
    data: list[SearchResult]


class PullList(msgspec.Struct):
    data: list[PullStatus]


class ModelsController(Controller):
    path = "/api/models"
    tags = ("models",)

    @get("/", operation_id="listLocalModels", summary="Every model in the local registry")
    async def list_models(self, models: NamedDependency[ModelService]) -> LocalModelList:
        return LocalModelList(data=await models.registry.list_models())

    @get(
        "/search",
        operation_id="searchHubModels",
        summary="Find models on the hub, and whether the installed vLLM can serve them",
        responses=error_responses(400, 503),
    )
    async def search(
        self,
        models: NamedDependency[ModelService],
        q: FromQuery[str] = "",
        limit: FromQuery[int] = 20,
        sort: FromQuery[Literal["downloads", "likes", "last_modified", "trending"]] = "downloads",
    ) -> SearchResults:
        return SearchResults(data=await models.search(q, limit=limit, sort=sort))

    @post(
        "/pulls",
        operation_id="startPull",
        summary="Start (or join) a background pull of org/name[@revision]",
        status_code=202,
        responses=error_responses(400, 401, 404, 409, 503),
    )
    async def start_pull(self, models: NamedDependency[ModelService], data: JSONBody[PullRequest]) -> PullStatus:
        pull = models.pull(data.model, data.allow_patterns, data.ignore_patterns, data.base)
        # One metadata call decides whether the repo, the revision and the token are good: answer those with
        # their own status (404, 401...) rather than a 202 that fails a moment later.
        await pull.wait_resolved(RESOLVE_WAIT_S)
        if pull.state == "failed" and pull.exception is not None:
            raise pull.exception
        return pull.status()

    @get("/pulls", operation_id="listPulls", summary="Running pulls, and those finished in the last hour")
    async def list_pulls(self, models: NamedDependency[ModelService]) -> PullList:
        return PullList(data=[pull.status() for pull in models.pulls.recent()])

    @get("/pulls/{pull_id:str}", operation_id="showPull", summary="One pull's progress", responses=error_responses(404))
    async def show_pull(self, models: NamedDependency[ModelService], pull_id: FromPath[str]) -> PullStatus:
        return models.pulls.get(pull_id).status()

    @delete(
        "/pulls/{pull_id:str}",
        operation_id="cancelPull",
        summary="Cancel a pull; its partial files stay for a resume",
        status_code=200,
        responses=error_responses(404),
    )
    async def cancel_pull(self, models: NamedDependency[ModelService], pull_id: FromPath[str]) -> PullStatus:
        pull = models.pulls.get(pull_id)
        await models.pulls.cancel(pull)
        return pull.status()

    @get(
        "/pulls/{pull_id:str}/events",
        operation_id="followPull",
        summary="Server-sent events: `progress` about once a second, then one named after the final state",
        responses=error_responses(404),
        opt={EVENT_STREAM: PullStatus},
    )
    async def follow_pull(self, models: NamedDependency[ModelService], pull_id: FromPath[str]) -> ServerSentEvent:
        pull = models.pulls.get(pull_id)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            while True:
                status = pull.status()
                data = msgspec.json.encode(status).decode()
                if status.state in FINISHED:
                    yield ServerSentEventMessage(event=status.state, data=data)
                    return
                yield ServerSentEventMessage(event="progress", data=data)
                await pull.wait(EVENT_EVERY_S)

        return ServerSentEvent(events())

    @post(
        "/import",
        operation_id="importModel",
        summary="Register a local model directory, or a LoRA adapter's (PEFT layout) with its base",
        status_code=201,
        responses=error_responses(400, 409),
    )
    async def import_model(self, models: NamedDependency[ModelService], data: JSONBody[ImportRequest]) -> ModelRecord:
        return await models.import_dir(Path(data.path), data.name, data.base)

    @get("/{name:path}", operation_id="showLocalModel", summary="One registered model", responses=error_responses(404))
    async def show_model(self, models: NamedDependency[ModelService], name: FromPath[str]) -> ModelRecord:
        return await models.registry.require(name.lstrip("/"))

    @delete(
        "/{name:path}",
        operation_id="removeLocalModel",
        summary="Remove a model and the files BitingLip owns (refused while a server uses it, unless forced)",
        status_code=200,
        responses=error_responses(404, 409),
    )
    async def remove_model(
        self, models: NamedDependency[ModelService], name: FromPath[str], force: FromQuery[bool] = False
    ) -> ModelRecord:
        return await models.remove(name.lstrip("/"), force=force)
