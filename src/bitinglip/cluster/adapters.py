"""The LoRA adapters the registry has, as the cluster looks them up on every request that names one.

The registry is the truth (a CLI in another process may add or remove adapters), but a request must not wait for a
database read: the list is read again when it is older than `REFRESH_S`, or when a name is not in it (a new adapter
is served on its first request). Loads (sizing an engine's LoRA) always read it afresh.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from bitinglip.cluster.protocol import Adapter

REFRESH_S = 5.0


class AdapterBook:
    def __init__(self, read: Callable[[], Awaitable[list[Adapter]]]) -> None:
        self._read = read
        self._by_name: dict[str, Adapter] = {}
        self._read_at = -REFRESH_S

    async def _refresh(self) -> None:
        adapters = await self._read()
        self._by_name = {a.name: a for a in adapters}
        self._read_at = time.monotonic()

    async def get(self, name: str) -> Adapter | None:
        # A name not known is read for again (as an unknown model name is looked up in the registry anyway).
        if name not in self._by_name or time.monotonic() - self._read_at > REFRESH_S:
            await self._refresh()
        return self._by_name.get(name)

    def known(self, name: str) -> Adapter | None:
        """As of the last read: no I/O."""
        return self._by_name.get(name)

    def names_of(self, base: str | None) -> list[str]:
        """The adapters of ``base`` as of the last read: no I/O."""
        return sorted(a.name for a in self._by_name.values() if a.base == base)

    async def all(self) -> list[Adapter]:
        await self._refresh()
        return sorted(self._by_name.values(), key=lambda a: a.name)

    async def of(self, base: str) -> list[Adapter]:
        """The adapters of the registered model ``base``, read afresh."""
        return [a for a in await self.all() if a.base == base]
