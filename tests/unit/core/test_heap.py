"""Settling the heap: what stays is frozen (full collections skip it); when engines went, what they left in
cycles is collected first."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bitinglip.core import settle_heap


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


@pytest.mark.usefixtures("restored")
def test_what_stays_is_frozen_and_a_cycle_that_went_is_collected_when_engines_go() -> None:
    kept = [Node() for _ in range(100)]
    settle_heap(collect=False)
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == 2000  # the youngest generation is collected less often once engines are up
    assert not any(o is kept[0] for g in range(3) for o in gc.get_objects(g))  # no generation lists it now

    gone = weakref.ref(cycle())  # made after the freeze, unreachable at once: young garbage, collected as usual
    gc.collect()
    assert gone() is None

    held = [cycle()]
    settle_heap(collect=False)  # an engine came: frozen while held
    frozen = weakref.ref(held.pop())  # then let go: garbage, but in the frozen heap
    gc.collect()
    assert frozen() is not None, "a full collection does not look at frozen objects"
    settle_heap(collect=False)  # another engine came: still frozen
    assert frozen() is not None
    settle_heap(collect=True)  # an engine went: unfrozen and collected first
    assert frozen() is None
    assert gc.get_freeze_count() >= len(kept)
