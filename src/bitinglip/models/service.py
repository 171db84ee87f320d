"""Model operations shared by the CLI, the HTTP API and the cluster: search, pull, create, import, resolve, remove."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import shutil
import socket
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any

import msgspec

from bitinglip.core import Conflict, InvalidInput, NotFound, get_logger
from bitinglip.models.adapters import fit_problems, is_adapter_dir, read_adapter
from bitinglip.models.hub import HubClient, OfflineError, parse_ref
from bitinglip.models.pull_state import Pull
from bitinglip.models.pulls import PullManager, pid_alive
from bitinglip.models.registry import ModelRecord, ModelRegistry, inspect_dir, validate_name

log = get_logger(__name__)
TINY_NAME = "tiny"
SERVE_PROGRESS_EVERY_S = 5.0


class SearchResult(msgspec.Struct, kw_only=True):
    id: str
    downloads: int | None
    likes: int | None
    task: str | None
    last_modified: str | None
    architectures: list[str] | None
    servable: bool | None  # None: the hub did not say which architecture it is


class ModelService:
    def __init__(
        self,
        registry: ModelRegistry,
        hub: HubClient,
        supported_architectures: Callable[[], Set[str]],
        adapter_problems: Callable[[dict[str, Any]], list[str]] = lambda _config: [],
    ) -> None:
        self.registry = registry
        self.hub = hub
        self.supported_architectures = supported_architectures
        # What the installed vLLM refuses in an adapter's config (DoRA, a bias, a rank past its largest...): injected
        # by the app, as this module never imports vllm.
        self.adapter_problems = adapter_problems
        # Names this process has loaded in an engine; other processes see them through the rows' used_by_pid.
        self.in_use: set[str] = set()
        self.pulls = PullManager(registry, hub, supported_architectures, self.is_in_use, self.adapter_fields)

    async def start(self, *, resume_pulls: bool) -> None:
        """Forget the in-use marks of dead processes; a server also resumes pulls a dead process left behind."""
        for record in await self.registry.list_models():
            if record.used_by_pid is not None and not pid_alive(record.used_by_pid, record.host):
                await self.registry.update(record.name, used_by_pid=None)
        if resume_pulls:
            await self.pulls.resume_unfinished()

    async def stop(self) -> None:
        """Cancel running pulls (their partial files stay, the next pull resumes them) and release our models."""
        await self.pulls.stop()
        if self.in_use:
            await self.registry.release_all(os.getpid())

    def is_in_use(self, record: ModelRecord) -> bool:
        return record.name in self.in_use or pid_alive(record.used_by_pid, record.host)

    async def mark_in_use(self, name: str) -> None:
        self.in_use.add(name)
        await self.registry.update(name, used_by_pid=os.getpid())

    async def search(self, query: str, *, limit: int = 20, sort: str = "downloads") -> list[SearchResult]:
        hits = await asyncio.to_thread(self.hub.search, query, limit=limit, sort=sort)
        supported = await asyncio.to_thread(self.supported_architectures)
        return [
            SearchResult(
                id=h.repo_id,
                downloads=h.downloads,
                likes=h.likes,
                task=h.task,
                last_modified=h.last_modified,
                architectures=list(h.architectures) if h.architectures else None,
                servable=any(a in supported for a in h.architectures) if h.architectures else None,
            )
            for h in hits
        ]

    async def create_tiny(
        self, name: str = TINY_NAME, *, if_missing: bool = False, embedding: bool = False, reasoning: bool = False
    ) -> ModelRecord:
        from bitinglip.models.tiny import create_tiny_model, is_current  # torch and transformers: only when asked

        existing = await self.registry.get(name)
        # An existing model an older BitingLip built (another chat template) is rebuilt: same seed, same weights.
        if (
            if_missing
            and existing
            and existing.state == "ready"
            and is_current(Path(existing.path), embedding=embedding, reasoning=reasoning)
        ):
            return existing
        path = self.registry.path_for(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(functools.partial(create_tiny_model, path, embedding=embedding, reasoning=reasoning))
        return await self._register(name, path, source="tiny")

    async def import_dir(self, path: Path, name: str | None = None, base: str | None = None) -> ModelRecord:
        """Register a local model folder, or a LoRA adapter folder (of ``base``, else of the model its config names)."""
        path = path.expanduser().resolve()
        adapter = is_adapter_dir(path)
        if not adapter and not (path / "config.json").is_file():
            raise InvalidInput(
                f"{path} is neither a model directory (config.json) nor a LoRA adapter (adapter_config.json)",
                param="path",
            )
        if base is not None and not adapter:
            raise InvalidInput(f"{path} is a model, not an adapter: `base` is for adapters", param="base")
        name = validate_name(name or path.name)
        existing = await self.registry.get(name)
        if existing and Path(existing.path).resolve() != path:
            raise Conflict(
                f"a model named {name!r} already exists at {existing.path}; pick another --name", param="name"
            )
        if adapter:
            fields = await self.adapter_fields(path, base)
            return await self._register(name, path, source="local", **fields)
        return await self._register(name, path, source="local")

    async def create_tiny_adapter(self, name: str, base: str, *, seed: int = 1, rank: int = 8) -> ModelRecord:
        """A random LoRA adapter of the registered model ``base`` (tests and offline examples)."""
        from bitinglip.models.adapters import create_tiny_adapter

        base_record = await self._base(base, param="base")
        path = self.registry.path_for(name)
        existing = await self.registry.get(name)
        if existing is not None and Path(existing.path).resolve() != path.resolve():
            raise Conflict(f"a model named {name!r} already exists at {existing.path}", param="name")
        await asyncio.to_thread(
            functools.partial(
                create_tiny_adapter, path, Path(base_record.path), base_name=base_record.name, seed=seed, rank=rank
            )
        )
        fields = await self.adapter_fields(path, base_record.name)
        return await self._register(name, path, source="tiny", **fields)

    async def adapter_fields(self, path: Path, base: str | None) -> dict[str, Any]:
        """An adapter's own fields of its row, once it is known to fit its base: InvalidInput naming what does not
        (the base unknown, shapes that do not match it, what vLLM cannot serve)."""
        facts = await asyncio.to_thread(read_adapter, path)
        if base is not None:
            base_record = await self._base(base, param="base")
        elif facts.base_model is None:
            raise InvalidInput(
                f"adapter {path.name}: its adapter_config.json names no base_model_name_or_path; name its base",
                param="base_model_name_or_path",
            )
        else:
            base_record = await self._base(facts.base_model, param="base_model_name_or_path")
        problems = await asyncio.to_thread(fit_problems, path, Path(base_record.path))
        problems += self.adapter_problems(facts.config)
        if problems:
            raise InvalidInput(
                f"adapter {path.name} cannot be served on {base_record.name}: {'; '.join(problems)}",
                param="adapter",
                code="adapter_does_not_fit",
            )
        return {
            "kind": "adapter",
            "base_model": base_record.name,
            "lora_rank": facts.rank,
            "target_modules": facts.target_modules,
            "architecture": base_record.architecture,
            "context_length": base_record.context_length,
        }

    async def _base(self, ref: str, *, param: str) -> ModelRecord:
        """The registered model an adapter names as its base: by registry name, hub id or path."""
        records = await self.registry.list_models()
        where = str(Path(ref).expanduser().resolve()) if ref.startswith(("/", ".", "~")) else None
        found = next(
            (r for r in records if ref in (r.name, r.repo_id) or (where is not None and r.path == where)), None
        )
        if found is None:
            raise InvalidInput(
                f"the adapter's base {ref!r} ({param}) is not a registered model: pull or import it first, or name "
                "the base (`--base NAME`)",
                param=param,
                code="base_model_not_found",
            )
        if found.adapter:
            raise InvalidInput(f"{found.name!r} is an adapter itself, not a base model", param=param)
        if found.state != "ready":
            raise Conflict(f"the adapter's base {found.name!r} is {found.state}, not ready", param=param)
        return found

    async def _register(self, name: str, path: Path, *, source: str, **fields: object) -> ModelRecord:
        facts = await asyncio.to_thread(inspect_dir, path)
        values: dict[str, Any] = {
            "size_bytes": facts.size_bytes,
            "architecture": facts.architecture,
            "context_length": facts.context_length,
            "dtype": facts.dtype,
            "parameters": facts.parameters,
            **fields,  # an adapter's: its base's architecture and context
        }
        record = ModelRecord(name=name, source=source, path=str(path), state="ready", **values)
        saved = await self.registry.save(record)
        log.info("model.registered", name=name, path=str(path), source=source)
        return saved

    def pull(
        self, ref: str, allow: list[str] | None = None, ignore: list[str] | None = None, base: str | None = None
    ) -> Pull:
        """Start (or join) a background pull of ``org/name[@revision]``; see PullManager."""
        return self.pulls.start(ref, allow, ignore, base)

    async def resolve_to_load(self, spec: str) -> tuple[Path, str]:
        """A registry name, a local model directory or a hub id -> (path, name), pulled first if need be;
        marks it in use by this process, so `rm` elsewhere refuses it."""
        path, name = await self._resolve(spec)
        await self.registry.touch(name)
        await self.mark_in_use(name)
        return path, name

    async def _resolve(self, spec: str) -> tuple[Path, str]:
        record = await self.registry.find(spec)  # this machine's, else another's (to say where it is)
        if record is not None and record.adapter:
            raise InvalidInput(
                f"{spec!r} is a LoRA adapter of {record.base_model}: it is served on that model's engines when a "
                f"request names it; deploy {record.base_model} instead",
                param="model",
                code="adapter_not_deployable",
            )
        if record is not None:
            if record.state == "ready":
                if record.host not in (None, socket.gethostname()) and not Path(record.path).is_dir():
                    raise Conflict(
                        f"model {record.name!r} was pulled on {record.host} and its files are there, not on this "
                        f"machine: deploy it on {record.host} (requests for it are then forwarded there), or give "
                        "the instances one shared models.dir",
                        param="model",
                        code="model_on_another_machine",
                    )
                return Path(record.path), record.name
            if record.source == "hub":  # a pull that failed or was cut short: try again (it resumes)
                return await self._pull_to_load(record.pull_ref or spec)
            why = f": {record.error}" if record.error else ""
            raise Conflict(f"model {spec!r} is {record.state}, not ready{why}")
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
        try:
            repo_id, revision = parse_ref(spec)
        except InvalidInput:
            hint = " Run `bitinglip models create-tiny` to make the offline default." if spec == TINY_NAME else ""
            raise NotFound(
                f"model {spec!r} is neither a registered model, a model directory nor a hub id (org/name).{hint}",
                param="model",
                code="model_not_found",
            ) from None
        pinned = await self.registry.get(repo_id)
        if (
            pinned is not None
            and pinned.state == "ready"
            and revision is not None
            and (pinned.revision == revision or (len(revision) >= 7 and (pinned.commit_sha or "").startswith(revision)))
        ):
            return Path(pinned.path), pinned.name  # that revision is here already: no network
        return await self._pull_to_load(spec)

    async def _pull_to_load(self, ref: str) -> tuple[Path, str]:
        """Pull a hub model before serving it, logging its progress every few seconds."""
        try:
            pull = self.pulls.start(ref)
        except Conflict:  # another revision of it is being pulled: wait for that one, then take what is there
            pull = self.pulls.active(parse_ref(ref)[0])  # type: ignore[assignment]
            if pull is None:
                raise
        log.info("model.pulling_before_serving", ref=ref, pull=pull.id)
        while not await pull.wait(SERVE_PROGRESS_EVERY_S):
            s = pull.status()
            log.info(
                "model.pull_progress",
                ref=ref,
                state=s.state,
                bytes_done=s.bytes_done,
                bytes_total=s.bytes_total,
                rate_mb_s=round(s.rate / 1e6, 2),
                eta_s=s.eta_s,
            )
        if pull.exception is not None:
            error = pull.exception
            if isinstance(error, OfflineError):
                error = OfflineError(f"model {ref!r} is not in the registry nor a local directory, and {error.message}")
            raise error
        record = await self.registry.require(pull.repo_id)
        if record.state != "ready":
            raise Conflict(f"model {record.name!r} is {record.state} after its pull: {record.error}")
        return Path(record.path), record.name

    async def remove(self, name: str, *, force: bool = False) -> ModelRecord:
        record = await self.registry.require(name)
        here = socket.gethostname()
        if record.host not in (None, here):
            raise Conflict(
                f"model {name!r} is on {record.host}, not on this machine: remove it there (each machine removes its "
                "own copy)",
                param="name",
                code="model_on_another_machine",
            )
        adapters = [] if record.adapter else [a for a in await self.registry.adapters_of(name) if a.host == here]
        if adapters and not force:
            names = ", ".join(a.name for a in adapters)
            raise Conflict(
                f"model {name!r} has adapters ({names}): remove them first, or force the removal to remove them too",
                param="name",
                code="model_has_adapters",
            )
        for adapter in adapters:
            await self.remove(adapter.name, force=True)
        if self.is_in_use(record) and not force:
            where = "here" if name in self.in_use else f"by the server with pid {record.used_by_pid}"
            raise Conflict(f"model {name!r} is being served {where}; stop it first or force the removal", param="name")
        pull = self.pulls.active(name)
        if pull is not None:
            if not force:
                raise Conflict(
                    f"model {name!r} is being pulled ({pull.id}); force the removal to cancel it", param="name"
                )
            await self.pulls.cancel(pull)
        path = Path(record.path)
        if record.source == "hub":  # every commit of it, and any partial downloads
            await asyncio.to_thread(shutil.rmtree, self.registry.hub_repo_dir(record.repo_id or name), True)
        # Only files we own (pulled or created under models.dir) are deleted; an imported folder stays.
        elif path.resolve().is_relative_to(self.registry.models_dir.resolve()) and record.source != "local":
            await asyncio.to_thread(shutil.rmtree, path, True)
        await self.registry.delete(name)
        log.info("model.removed", name=name, path=str(path))
        return record
