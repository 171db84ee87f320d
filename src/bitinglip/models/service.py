"""Model operations shared by the CLI, the HTTP API and the cluster: create, import, resolve, remove."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

from bitinglip.core.errors import Conflict, InvalidInput, NotFound
from bitinglip.core.logging import get_logger
from bitinglip.models.registry import ModelRecord, ModelRegistry, inspect_dir, validate_name

log = get_logger(__name__)
TINY_NAME = "tiny"


class ModelService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        # Names currently served, so `rm` can refuse them; set by the app, which knows the cluster.
        self.in_use: set[str] = set()

    async def create_tiny(self, name: str = TINY_NAME, *, if_missing: bool = False) -> ModelRecord:
        from bitinglip.models.tiny import create_tiny_model  # torch and transformers: only when asked

        existing = await self.registry.get(name)
        if if_missing and existing and existing.state == "ready" and Path(existing.path, "config.json").is_file():
            return existing
        path = self.registry.path_for(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(create_tiny_model, path)
        return await self._register(name, path, source="tiny")

    async def import_dir(self, path: Path, name: str | None = None) -> ModelRecord:
        path = path.expanduser().resolve()
        if not (path / "config.json").is_file():
            raise InvalidInput(f"{path} is not a model directory: it has no config.json", param="path")
        name = validate_name(name or path.name)
        existing = await self.registry.get(name)
        if existing and Path(existing.path).resolve() != path:
            raise Conflict(f"a model named {name!r} already exists at {existing.path}; pick another --name", param="name")
        return await self._register(name, path, source="local")

    async def _register(self, name: str, path: Path, *, source: str, **fields: object) -> ModelRecord:
        facts = await asyncio.to_thread(inspect_dir, path)
        record = ModelRecord(
            name=name,
            source=source,
            path=str(path),
            state="ready",
            size_bytes=facts.size_bytes,
            architecture=facts.architecture,
            context_length=facts.context_length,
            dtype=facts.dtype,
            parameters=facts.parameters,
            **fields,  # type: ignore[arg-type]
        )
        saved = await self.registry.save(record)
        log.info("model.registered", name=name, path=str(path), source=source)
        return saved

    async def resolve_for_serving(self, spec: str) -> tuple[Path, str]:
        """A registry name, a local model directory or a hub id -> (path, served name); marks it used."""
        path, name = await self._resolve(spec)
        await self.registry.touch(name)
        return path, name

    async def _resolve(self, spec: str) -> tuple[Path, str]:
        record = await self.registry.get(spec)
        if record is not None:
            if record.state != "ready":
                raise Conflict(f"model {spec!r} is {record.state}, not ready" + (f": {record.error}" if record.error else ""))
            return Path(record.path), record.name
        path = Path(spec).expanduser()
        if path.is_dir():
            known = await self.registry.find_by_path(path)
            if known is not None:
                return path.resolve(), known.name
            name = path.name
            if await self.registry.get(name) is not None:  # same folder name elsewhere: tell them apart
                name = f"{name}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:6]}"
            record = await self.import_dir(path, name)
            return Path(record.path), record.name
        hint = " Run `bitinglip models create-tiny` to make the offline default." if spec == TINY_NAME else ""
        raise NotFound(f"model {spec!r} is neither a registered model nor a model directory.{hint}", param="model",
                       code="model_not_found")

    async def remove(self, name: str, *, force: bool = False) -> ModelRecord:
        record = await self.registry.require(name)
        if name in self.in_use and not force:
            raise Conflict(f"model {name!r} is being served; stop it first or force the removal", param="name")
        path = Path(record.path)
        # Only files we own (pulled or created under models.dir) are deleted; an imported folder stays.
        if path.resolve().is_relative_to(self.registry.models_dir.resolve()) and record.source != "local":
            await asyncio.to_thread(shutil.rmtree, path, True)
        await self.registry.delete(name)
        log.info("model.removed", name=name, path=str(path))
        return record
