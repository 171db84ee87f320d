"""Several prompts' generations as one stream: each output tagged with its prompt's index, the streams
interleaved as their items arrive (a completions request with a list of prompts)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from bitinglip.cluster import EngineOutput


async def tagged(
    index: int, stream: AsyncGenerator[EngineOutput, None]
) -> AsyncGenerator[tuple[int, EngineOutput], None]:
    # Closed at once when our consumer stops (that aborts the request), not whenever it is collected.
    async with contextlib.aclosing(stream):
        async for item in stream:
            yield index, item


async def merge(
    streams: Sequence[AsyncIterator[tuple[int, EngineOutput]]],
) -> AsyncGenerator[tuple[int, EngineOutput], None]:
    """Interleave several streams as their items arrive; closing the merge closes them all."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    end = object()

    async def pump(stream: AsyncIterator[tuple[int, EngineOutput]]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
        except BaseException as exc:
            await queue.put(exc)
        finally:
            await queue.put(end)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is end:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
