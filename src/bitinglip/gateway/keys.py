"""API keys: made, listed and revoked in the database (the CLI does this directly, the server through /api/keys).

A key reads `bl_<id>_<secret>`: the id (12 hex digits) finds the row, the SHA-256 of the whole key is compared
in constant time. The key is shown once, when it is made; only its hash is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Literal

import msgspec
import sqlalchemy as sa

from bitinglip.core import Conflict, Database, Forbidden, InvalidInput, NotFound
from bitinglip.gateway.tables import api_keys

Scope = Literal["inference", "admin"]
_KEY = re.compile(r"^bl_([0-9a-f]{12})_[A-Za-z0-9_-]{20,100}$")


class ApiKey(msgspec.Struct, kw_only=True):
    """A key as stored, without its secret."""

    id: str
    name: str
    scope: Scope
    models: list[str] | None  # None: any model
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    expires_at: float | None
    created_at: float
    revoked_at: float | None
    hash: str = ""  # of the whole key; ApiKey is never sent (KeyView is)

    def state(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return "expired"
        return "active"

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def check_model(self, model: str | None) -> None:
        """Forbidden (403) for a model this key may not use."""
        if model and not self.may_use(model):
            raise Forbidden(f"this API key may not use the model `{model}`", param="model", code="model_not_allowed")

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None


class Headroom(msgspec.Struct, kw_only=True):
    """A key's per-minute limits now: what is left of each (None where it has none) and when the window empties."""

    requests_left: int | None
    tokens_left: int | None
    reset_s: float


class KeyView(msgspec.Struct, kw_only=True):
    """A key as /api/keys and `bitinglip keys list` show it."""

    id: str
    name: str
    scope: Scope
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    expires_at: float | None
    created_at: float
    revoked_at: float | None
    state: str
    prefix: str  # what the key starts with, to tell keys apart: "bl_<id>_"
    headroom: Headroom | None = None  # on /api/keys and /api/me: what its per-minute limits leave now


class NewKey(msgspec.Struct, kw_only=True):
    """A key just made: the only time `key` is shown."""

    key: str
    info: KeyView


class KeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    scope: Scope = "inference"
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    expires_at: float | None = None  # Unix seconds


def view(key: ApiKey, headroom: Headroom | None = None) -> KeyView:
    return KeyView(
        id=key.id,
        name=key.name,
        scope=key.scope,
        models=key.models,
        rpm=key.rpm,
        tpm=key.tpm,
        max_concurrent=key.max_concurrent,
        expires_at=key.expires_at,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        state=key.state(),
        prefix=f"bl_{key.id}_",
        headroom=headroom,
    )


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """The id a well-formed key names; None for anything else (no database lookup for junk)."""
    match = _KEY.match(key)
    return match[1] if match else None


def matches(key: str, stored: ApiKey) -> bool:
    return hmac.compare_digest(digest(key), stored.hash)


def _row_to_key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        scope=m["scope"],
        models=msgspec.json.decode(m["models"]) if m["models"] is not None else None,
        rpm=m["rpm"],
        tpm=m["tpm"],
        max_concurrent=m["max_concurrent"],
        expires_at=m["expires_at"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
        hash=m["hash"],
    )


def _check(spec: KeyCreate) -> None:
    if not spec.name.strip():
        raise InvalidInput("a key needs a name", param="name")
    for field in ("rpm", "tpm", "max_concurrent"):
        value = getattr(spec, field)
        if value is not None and value < 1:
            raise InvalidInput(f"`{field}` must be at least 1 (leave it out for no limit)", param=field)
    if spec.models is not None and (not spec.models or not all(m.strip() for m in spec.models)):
        raise InvalidInput("`models` must name at least one model (leave it out for any)", param="models")
    if spec.expires_at is not None and spec.expires_at <= time.time():
        raise InvalidInput("`expires_at` is in the past", param="expires_at")


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, spec: KeyCreate) -> NewKey:
        _check(spec)
        ident = secrets.token_hex(6)
        key = f"bl_{ident}_{secrets.token_urlsafe(24)}"
        row = ApiKey(
            id=ident,
            name=spec.name.strip(),
            scope=spec.scope,
            models=spec.models,
            rpm=spec.rpm,
            tpm=spec.tpm,
            max_concurrent=spec.max_concurrent,
            expires_at=spec.expires_at,
            created_at=time.time(),
            revoked_at=None,
            hash=digest(key),
        )
        values = msgspec.structs.asdict(row)
        values["models"] = msgspec.json.encode(row.models).decode() if row.models is not None else None
        async with self.db.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))
        return NewKey(key=key, info=view(row))

    async def get(self, ident: str) -> ApiKey | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == ident))).first()
        return _row_to_key(row) if row is not None else None

    async def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self.db.engine.connect() as conn:
            return [_row_to_key(row) for row in await conn.execute(query)]

    async def find(self, id_or_name: str) -> ApiKey:
        """A key by its id, its prefix (`bl_<id>_...`) or its name (which must then be unique among live keys)."""
        ident = key_id(id_or_name) or id_or_name.removeprefix("bl_").rstrip("_")
        if (found := await self.get(ident)) is not None:
            return found
        named = [k for k in await self.list() if k.name == id_or_name]
        if len(named) > 1:
            raise Conflict(f"{len(named)} keys are named {id_or_name!r}; name one by its id", param="key")
        if not named:
            raise NotFound(f"no key {id_or_name!r}", param="key", code="key_not_found")
        return named[0]

    async def revoke(self, id_or_name: str) -> ApiKey:
        key = await self.find(id_or_name)
        if key.revoked_at is None:
            key.revoked_at = time.time()
            async with self.db.engine.begin() as conn:
                await conn.execute(sa.update(api_keys).where(api_keys.c.id == key.id).values(revoked_at=key.revoked_at))
        return key


class KeyList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[KeyView]
