"""The LoRA adapters the registry has, as the cluster looks them up on every request that names one.

The registry is the truth (a CLI in another process may add or remove adapters), but a request for a known adapter
must not wait for a database read: once the list is older than `REFRESH_S` it is read again in the background. A
name not in it is read for at once (a new adapter is served on its first request); loads (sizing an engine's LoRA)
read it afresh. Concurrent callers share one read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bitinglip.cluster.protocol import Adapter

REFRESH_S = 5.0


class AdapterBook:
    def __init__(self, read: Callable[[], Awaitable[list[Adapter]]]) -> None:
        self._read = read
        self._by_name: dict[str, Adapter] = {}
        self._read_at = -REFRESH_S
        self._reading: asyncio.Task[None] | None = None  # the one read under way: every caller shares it

    def _refresh(self) -> asyncio.Task[None]:
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._reread())
            # A background read nobody awaits still has its error looked at (and the next call reads again).
            self._reading.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self._reading

    async def _reread(self) -> None:
        adapters = await self._read()
        self._by_name = {a.name: a for a in adapters}
        self._read_at = time.monotonic()

    async def get(self, name: str) -> Adapter | None:
        known = self._by_name.get(name)
        if known is None:  # not known (yet): read for it, as an unknown model name is looked up in the registry
            await asyncio.shield(self._refresh())
            return self._by_name.get(name)
        if time.monotonic() - self._read_at > REFRESH_S:
            self._refresh()  # in the background: this request goes on with what is known
        return known

    def known(self, name: str) -> Adapter | None:
        """As of the last read: no I/O."""
        return self._by_name.get(name)

    def names_of(self, base: str | None) -> list[str]:
        """The adapters of ``base`` as of the last read: no I/O."""
        return sorted(a.name for a in self._by_name.values() if a.base == base)

    async def all(self) -> list[Adapter]:
        await asyncio.shield(self._refresh())
        return sorted(self._by_name.values(), key=lambda a: a.name)

    async def of(self, base: str) -> list[Adapter]:
        """The adapters of the registered model ``base``, read afresh."""
        return [a for a in await self.all() if a.base == base]
