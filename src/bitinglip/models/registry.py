"""The model registry: what models exist locally, where, and whether they can be served."""

from __future__ import annotations

import json
import math
import re
import socket
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import sqlalchemy as sa

from bitinglip.core import Database, InvalidInput, NotFound
from bitinglip.models import tables

State = Literal["pulling", "ready", "failed"]
Kind = Literal["model", "adapter"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?(@[A-Za-z0-9._/-]{1,100})?$")
# First path segments that are not model names: API routes under /api/models, and the folder of hub pulls.
RESERVED_NAMES = frozenset({"pulls", "search", "import", "hub"})
HUB_DIR = "hub"
CONTEXT_KEYS = ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length", "max_sequence_length")


class ModelRecord(msgspec.Struct, kw_only=True):
    name: str
    source: str
    path: str
    state: State
    repo_id: str | None = None
    revision: str | None = None
    commit_sha: str | None = None
    size_bytes: int = 0
    architecture: str | None = None
    context_length: int | None = None
    dtype: str | None = None
    parameters: int | None = None
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_used_at: datetime | None = None
    pull_ref: str | None = None
    pull_patterns: str | None = None
    pull_pid: int | None = None
    used_by_pid: int | None = None
    kind: Kind = "model"
    base_model: str | None = None  # an adapter's base: the registry name of the model it is served on
    lora_rank: int | None = None
    target_modules: list[str] | None = None
    # The machine its files are on (and its pull_pid's and used_by_pid's): instances on other machines share the
    # registry, not the files; each machine that has the model has a row of its own.
    host: str | None = None
    # Every machine with a row for this name (read, never written): which instances have the model.
    hosts: list[str] = msgspec.field(default_factory=list)

    @property
    def adapter(self) -> bool:
        return self.kind == "adapter"


class ModelFacts(msgspec.Struct, kw_only=True):
    """What a model directory says about itself."""

    size_bytes: int
    architecture: str | None
    context_length: int | None
    dtype: str | None
    parameters: int | None


def validate_name(name: str) -> str:
    if not name or not NAME_RE.match(name) or ".." in name:
        raise InvalidInput(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (optionally org/name)", param="name"
        )
    if name.split("/", 1)[0].split("@", 1)[0] in RESERVED_NAMES:
        raise InvalidInput(
            f"model name {name!r} is reserved: no name may start with {sorted(RESERVED_NAMES)}", param="name"
        )
    return name


def _safetensors_parameters(path: Path) -> int:
    # The header is an 8-byte little-endian length followed by JSON that lists every tensor's shape.
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def inspect_dir(path: Path) -> ModelFacts:
    """Read config.json and the safetensors headers; blocking, so callers use a worker thread."""
    config: dict[str, Any] = {}
    config_path = path / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
    text_config = config.get("text_config") or {}
    architectures = config.get("architectures") or []
    context = next(
        (config.get(k) or text_config.get(k) for k in CONTEXT_KEYS if config.get(k) or text_config.get(k)), None
    )
    files = [p for p in path.rglob("*") if p.is_file() and ".partial" not in p.relative_to(path).parts]
    weights = [p for p in files if p.suffix == ".safetensors"]
    return ModelFacts(
        size_bytes=sum(p.stat().st_size for p in files),
        architecture=architectures[0] if architectures else None,
        context_length=int(context) if context else None,
        dtype=str(config.get("torch_dtype") or config.get("dtype") or text_config.get("torch_dtype") or "") or None,
        parameters=sum(_safetensors_parameters(p) for p in weights) if weights else None,
    )


def _now() -> datetime:
    return datetime.now(UTC)


class ModelRegistry:
    """Rows of the `models` table; services call it directly, the API and the CLI alike."""

    def __init__(self, db: Database, models_dir: Path) -> None:
        self.db = db
        self.models_dir = models_dir

    def path_for(self, name: str) -> Path:
        """Where a model named `name` lives under models.dir; never outside it."""
        validate_name(name)
        path = (self.models_dir / name.replace("@", "--")).resolve()
        if not path.is_relative_to(self.models_dir.resolve()):
            raise InvalidInput(f"model name {name!r} escapes the models directory", param="name")
        return path

    def hub_repo_dir(self, repo_id: str) -> Path:
        path = (self.models_dir / HUB_DIR / repo_id).resolve()
        if not path.is_relative_to((self.models_dir / HUB_DIR).resolve()):
            raise InvalidInput(f"repo id {repo_id!r} escapes the models directory", param="repo_id")
        return path

    def hub_path(self, repo_id: str, commit_sha: str) -> Path:
        """Where one commit of a hub repo lives: its own folder, so a new revision never overwrites the served one."""
        repo_dir = self.hub_repo_dir(repo_id)
        path = (repo_dir / commit_sha).resolve()
        if path.parent != repo_dir:
            raise InvalidInput(f"commit {commit_sha!r} is not a folder name", param="commit_sha")
        return path

    async def save(self, record: ModelRecord) -> ModelRecord:
        """Add or replace this machine's row of a model; its files are on this machine."""
        now = _now()
        record.host = here = socket.gethostname()
        record.updated_at = now
        record.created_at = record.created_at or now
        values = msgspec.structs.asdict(record)
        values.pop("hosts")
        if record.target_modules is not None:
            values["target_modules"] = json.dumps(record.target_modules)
        mine = (tables.models.c.name == record.name, tables.models.c.host == here)
        async with self.db.engine.begin() as conn:
            exists = (await conn.execute(sa.select(tables.models.c.name).where(*mine))).first()
            if exists:
                values.pop("created_at")
                await conn.execute(tables.models.update().where(*mine).values(**values))
            else:
                await conn.execute(tables.models.insert().values(**values))
        return record

    async def _rows(self, name: str) -> list[ModelRecord]:
        """Every machine's row of a model, the most recently updated first, each knowing the others' hosts."""
        query = sa.select(tables.models).where(tables.models.c.name == name)
        async with self.db.engine.connect() as conn:
            rows = [_record(r) for r in (await conn.execute(query)).mappings().all()]
        return _with_hosts(rows)

    async def get(self, name: str) -> ModelRecord | None:
        """This machine's row of a model: what it pulls, imports, serves and removes."""
        here = socket.gethostname()
        return next((r for r in await self._rows(name) if r.host == here), None)

    async def find(self, name: str) -> ModelRecord | None:
        """This machine's row of a model, else another machine's (which then has its files)."""
        return _preferred(await self._rows(name))

    async def require(self, name: str) -> ModelRecord:
        record = await self.find(name)
        if record is None:
            raise NotFound(f"model {name!r} is not in the registry", param="name", code="model_not_found")
        return record

    async def list_models(self) -> list[ModelRecord]:
        """Every model any machine has, one record each: this machine's row where it has one."""
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(tables.models).order_by(tables.models.c.name))).mappings().all()
        return _one_per_name([_record(r) for r in rows])

    async def adapters_of(self, base: str) -> list[ModelRecord]:
        """The adapters registered for the model named ``base`` (this machine's row of each, where it has one)."""
        async with self.db.engine.connect() as conn:
            query = sa.select(tables.models).where(tables.models.c.base_model == base).order_by(tables.models.c.name)
            return _one_per_name([_record(r) for r in (await conn.execute(query)).mappings().all()])

    async def find_by_path(self, path: Path) -> ModelRecord | None:
        here = tables.models.c.host == socket.gethostname()
        query = sa.select(tables.models).where(tables.models.c.path == str(path.resolve()), here)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return _record(row) if row else None

    async def update(self, name: str, **values: Any) -> None:
        """Change this machine's row of a model."""
        mine = (tables.models.c.name == name, tables.models.c.host == socket.gethostname())
        async with self.db.engine.begin() as conn:
            await conn.execute(tables.models.update().where(*mine).values(**values, updated_at=_now()))

    async def touch(self, name: str) -> None:
        await self.update(name, last_used_at=_now())

    async def unfinished_pulls(self) -> list[ModelRecord]:
        """This machine's pulls that have not finished (another machine resumes its own)."""
        query = sa.select(tables.models).where(
            tables.models.c.pull_ref.is_not(None), tables.models.c.host == socket.gethostname()
        )
        async with self.db.engine.connect() as conn:
            return [_record(r) for r in (await conn.execute(query)).mappings().all()]

    async def release_all(self, pid: int) -> None:
        """Forget that process ``pid`` uses any model (it is stopping)."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                tables.models.update()
                .where(tables.models.c.used_by_pid == pid, tables.models.c.host == socket.gethostname())
                .values(used_by_pid=None)
            )

    async def delete(self, name: str) -> bool:
        """Remove this machine's row of a model; the other machines keep theirs."""
        mine = (tables.models.c.name == name, tables.models.c.host == socket.gethostname())
        async with self.db.engine.begin() as conn:
            result = await conn.execute(tables.models.delete().where(*mine))
        return bool(result.rowcount)


def _preferred(rows: list[ModelRecord]) -> ModelRecord | None:
    """This machine's row, else the most recently updated."""
    if not rows:
        return None
    here = socket.gethostname()
    return next(
        (r for r in rows if r.host == here), max(rows, key=lambda r: r.updated_at or datetime.min.replace(tzinfo=UTC))
    )


def _with_hosts(rows: list[ModelRecord]) -> list[ModelRecord]:
    hosts = sorted({r.host for r in rows if r.host})
    for r in rows:
        r.hosts = hosts
    return rows


def _one_per_name(rows: list[ModelRecord]) -> list[ModelRecord]:
    by_name: dict[str, list[ModelRecord]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append(r)
    return [one for name in sorted(by_name) if (one := _preferred(_with_hosts(by_name[name]))) is not None]


def _record(row: Any) -> ModelRecord:
    values = dict(row)
    for key in ("created_at", "updated_at", "last_used_at"):
        # SQLite hands datetimes back without their zone; they were written in UTC.
        if values.get(key) is not None and values[key].tzinfo is None:
            values[key] = values[key].replace(tzinfo=UTC)
    if values.get("target_modules") is not None:
        values["target_modules"] = json.loads(values["target_modules"])
    return ModelRecord(**values)
