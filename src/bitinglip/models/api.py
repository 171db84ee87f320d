"""Admin routes for the model registry under /api/models: thin, they call ModelService."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response, delete, get
from litestar.params import FromPath, FromQuery

from bitinglip.models.service import ModelService


def _json(value: Any, status: int = 200) -> Response[bytes]:
    return Response(content=msgspec.json.encode(value), status_code=status, media_type="application/json")


def model_routes(service: ModelService) -> list[Any]:
    @get("/api/models", operation_id="listLocalModels")
    async def list_models() -> Response[bytes]:
        return _json({"data": await service.registry.list_models()})

    @get("/api/models/{name:path}", operation_id="showLocalModel")
    async def show_model(name: FromPath[str]) -> Response[bytes]:
        return _json(await service.registry.require(name.lstrip("/")))

    @delete("/api/models/{name:path}", operation_id="removeLocalModel", status_code=200)
    async def remove_model(name: FromPath[str], force: FromQuery[bool] = False) -> Response[bytes]:
        return _json(await service.remove(name.lstrip("/"), force=force))

    return [list_models, show_model, remove_model]
