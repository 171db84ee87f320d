"""A feed: the last N things that happened, numbered, for readers that poll for what is new since they last looked.

Writing is one append (the access line of every request goes through one), reading never blocks the writer, and a
reader that falls behind by more than N items skips the oldest: live views (the dashboard) want now, not a backlog.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Feed(Generic[T]):
    __slots__ = ("_items", "seq")

    def __init__(self, size: int) -> None:
        self._items: deque[tuple[int, T]] = deque(maxlen=size)
        self.seq = 0  # the number of the last item pushed

    def push(self, item: T) -> None:
        self.seq += 1
        self._items.append((self.seq, item))

    def since(self, seq: int) -> list[T]:
        """The items pushed after number ``seq``, oldest first (0: all that are kept)."""
        newer: list[T] = []
        for number, item in reversed(self._items):
            if number <= seq:
                break
            newer.append(item)
        newer.reverse()
        return newer
