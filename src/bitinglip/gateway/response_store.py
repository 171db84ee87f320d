"""Stored Responses (table `responses`): kept when a request has `store` (OpenAI's default), read back by id, by
`previous_response_id` (the whole chain, oldest first) and by its input items, deleted by id.

A key sees only the responses it made; an admin key, and every caller while auth is off, sees them all. A
response another key made answers 404, as one that does not exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import sqlalchemy as sa

from bitinglip.core import Database, InvalidInput, NotFound, get_logger
from bitinglip.gateway.protocol.responses import InputItemList, ResponseObject
from bitinglip.gateway.tables import responses

log = get_logger(__name__)

MAX_CHAIN = 1000  # turns of one conversation read back for `previous_response_id`: bounds a loop's work
MAX_ITEMS_PAGE = 100


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose stored responses a request may read: its key's own, or all of them (`everything`)."""

    owner: str  # the key id that stores what this request makes ("" while auth is off)
    everything: bool


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored turn of a chain: what its request sent and what it answered (both as JSON objects)."""

    id: str
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id", code="response_not_found")


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _visible(self, response_id: str, viewer: Viewer) -> sa.ColumnElement[bool]:
        found = responses.c.id == response_id
        return found if viewer.everything else sa.and_(found, responses.c.owner == viewer.owner)

    async def save(self, owner: str, response: ResponseObject, items: list[dict[str, Any]]) -> None:
        values = {
            "id": response.id,
            "owner": owner,
            "previous_response_id": response.previous_response_id,
            "model": response.model,
            "status": response.status,
            "created_at": time.time(),
            "input": msgspec.json.encode(items).decode(),
            "response": msgspec.json.encode(response).decode(),
        }
        async with self.db.engine.begin() as conn:
            await conn.execute(responses.insert().values(**values))

    async def get(self, response_id: str, viewer: Viewer) -> bytes:
        """The response object's JSON as it was answered; NotFound for an unknown id or another key's."""
        query = sa.select(responses.c.response).where(self._visible(response_id, viewer))
        async with self.db.engine.connect() as conn:
            text = (await conn.execute(query)).scalar()
        if text is None:
            raise not_found(response_id)
        return str(text).encode()

    async def chain(self, response_id: str, viewer: Viewer) -> list[Turn]:
        """The turns a response continues, oldest first, ending with it; NotFound when it is not there.

        A turn further back that was deleted ends the chain there: the conversation goes on from what is left."""
        turns: list[Turn] = []
        next_id: str | None = response_id
        query = sa.select(responses.c.input, responses.c.response, responses.c.previous_response_id)
        async with self.db.engine.connect() as conn:
            while next_id is not None and len(turns) < MAX_CHAIN:
                row = (await conn.execute(query.where(self._visible(next_id, viewer)))).first()
                if row is None:
                    if not turns:
                        raise not_found(response_id)
                    log.info("responses.chain_cut", response_id=response_id, missing=next_id)
                    break
                output = msgspec.json.decode(row.response).get("output") or []
                turns.append(Turn(id=next_id, input=msgspec.json.decode(row.input), output=output))
                next_id = row.previous_response_id
        turns.reverse()
        return turns

    async def delete(self, response_id: str, viewer: Viewer) -> None:
        async with self.db.engine.begin() as conn:
            done = await conn.execute(responses.delete().where(self._visible(response_id, viewer)))
        if not done.rowcount:
            raise not_found(response_id)

    async def input_items(
        self,
        response_id: str,
        viewer: Viewer,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> InputItemList:
        """A page of the items the response's request sent, as OpenAI pages them (`after` an item id)."""
        if not 1 <= limit <= MAX_ITEMS_PAGE:
            raise InvalidInput(f"`limit` must be between 1 and {MAX_ITEMS_PAGE}, got {limit}", param="limit")
        query = sa.select(responses.c.input).where(self._visible(response_id, viewer))
        async with self.db.engine.connect() as conn:
            text = (await conn.execute(query)).scalar()
        if text is None:
            raise not_found(response_id)
        items: list[dict[str, Any]] = msgspec.json.decode(text)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise InvalidInput(f"`after` {after!r} is not an item of response {response_id}", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return InputItemList(
            data=page,
            first_id=page[0].get("id") if page else None,
            last_id=page[-1].get("id") if page else None,
            has_more=len(items) > limit,
        )
