"""Requests per minute, tokens per minute and requests at once, exact over any 60 seconds.

Each limited thing (a key, a model) has a bucket: the log of the requests admitted in the last 60 s with
their tokens, and the requests in flight. A request reserves its prompt tokens plus its `max_tokens` when it
is admitted, and settles on the real count when it ends; it is admitted only if every bucket it touches has
room for it in the 60 s ending now. Because a reservation only ever shrinks, no 60 s window ever holds more
than the limit, and nothing is refused while the window has room for what the request may still use.

`LimitStore` is what the gateway talks to; `MemoryLimitStore` keeps the buckets in this process (one server
is exact), `SharedLimitStore` (shared_limits.py) in the PostgreSQL database several instances share.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from bitinglip.core import RateLimited

WINDOW_S = 60.0


class Limits(NamedTuple):
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None


class Bucket(NamedTuple):
    name: str  # "key:<id>" or "model:<name>", as messages name it
    limits: Limits


class Reservation(Protocol):
    """What a store hands back at admission; given back to `settle` when the request ends."""


class Snapshot(NamedTuple):
    """A bucket as OpenAI's x-ratelimit-* headers describe it."""

    requests_left: int
    tokens_left: int
    reset_s: float  # until the window is empty again (requests and tokens share it)


class LimitStore(Protocol):
    def check(self, buckets: Sequence[Bucket]) -> None:
        """Raise RateLimited if a bucket is full already: the cheap refusal before the prompt is tokenized."""

    async def reserve(self, buckets: Sequence[Bucket], tokens: int) -> Reservation:
        """Admit one request that may use ``tokens`` in all, or raise RateLimited saying when to retry."""
        ...

    def settle(self, reservation: Reservation, tokens: int) -> None:
        """The request ended having used ``tokens``: its reservation shrinks to that, its slot is free."""

    def snapshot(self, bucket: Bucket) -> Snapshot:
        """The bucket now, for the response headers."""
        ...


class _Entry:
    __slots__ = ("at", "live", "tokens")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens
        self.live = True  # in its bucket's window still


class _State:
    __slots__ = ("entries", "in_flight", "tokens")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.tokens = 0
        self.in_flight = 0

    def expire(self, now: float) -> None:
        entries, start = self.entries, now - WINDOW_S
        while entries and entries[0].at <= start:
            entry = entries.popleft()
            entry.live = False
            self.tokens -= entry.tokens

    def wait_for_tokens(self, need: int, limit: int, now: float) -> float:
        """Seconds until ``need`` more tokens fit under ``limit`` as the oldest entries leave the window."""
        over = self.tokens + need - limit
        for entry in self.entries:
            over -= entry.tokens
            if over <= 0:
                return entry.at + WINDOW_S - now
        return WINDOW_S


class _Held:
    __slots__ = ("entries", "settled", "states")

    def __init__(self, states: list[_State], entries: list[_Entry]) -> None:
        self.states = states
        self.entries = entries
        self.settled = False


def refuse(bucket: Bucket, what: str, limit: int, wait_s: float) -> RateLimited:
    retry = max(1, math.ceil(wait_s))
    return RateLimited(
        f"rate limit reached for {bucket.name}: {what} limit {limit}; retry in {retry} s", retry_after=retry
    )


def at_once(bucket: Bucket, concurrent: int) -> RateLimited:
    return RateLimited(
        f"rate limit reached for {bucket.name}: {concurrent} requests at once; retry when one ends",
        retry_after=1,
        code="concurrency_limit_exceeded",
    )


def too_large(bucket: Bucket, tokens: int, tpm: int) -> RateLimited:
    return RateLimited(
        f"request too large for {bucket.name}: it may use {tokens} tokens (prompt + max_tokens), "
        f"over the limit of {tpm} tokens per minute; lower max_tokens or shorten the prompt",
        code="request_too_large",
    )


class MemoryLimitStore:
    """The buckets in this process's memory; they go when their window is empty and nothing is in flight."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._states: dict[str, _State] = {}
        self._clock = clock

    def _state(self, name: str, now: float) -> _State:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _State()
            if len(self._states) > 10_000:  # keys come and go: drop the buckets that hold nothing
                self._prune(now)
        else:
            state.expire(now)
        return state

    def _prune(self, now: float) -> None:
        for name, state in list(self._states.items()):
            state.expire(now)
            if not state.entries and not state.in_flight:
                del self._states[name]

    def check(self, buckets: Sequence[Bucket]) -> None:
        now = self._clock()
        for bucket in buckets:
            self._fits(bucket, self._state(bucket.name, now), 0, now)

    def _fits(self, bucket: Bucket, state: _State, tokens: int, now: float) -> None:
        rpm, tpm, concurrent = bucket.limits
        if concurrent is not None and state.in_flight >= concurrent:
            raise at_once(bucket, concurrent)
        if rpm is not None and len(state.entries) >= rpm:
            raise refuse(bucket, "requests per minute", rpm, state.entries[0].at + WINDOW_S - now)
        if tpm is not None:
            if tokens > tpm:
                raise too_large(bucket, tokens, tpm)
            if state.tokens + max(tokens, 1) > tpm:
                raise refuse(bucket, "tokens per minute", tpm, state.wait_for_tokens(max(tokens, 1), tpm, now))

    async def reserve(self, buckets: Sequence[Bucket], tokens: int) -> _Held:
        return self.take(buckets, tokens)

    def take(self, buckets: Sequence[Bucket], tokens: int) -> _Held:
        """`reserve` without awaiting: nothing here waits on anything."""
        now = self._clock()
        states = [self._state(b.name, now) for b in buckets]
        for bucket, state in zip(buckets, states, strict=True):
            self._fits(bucket, state, tokens, now)
        entries = []
        for state in states:  # nothing awaited between the checks and here: admission is atomic
            entry = _Entry(now, tokens)
            state.entries.append(entry)
            state.tokens += tokens
            state.in_flight += 1
            entries.append(entry)
        return _Held(states, entries)

    def settle(self, reservation: Reservation, tokens: int) -> None:
        assert isinstance(reservation, _Held)
        if reservation.settled:
            return
        reservation.settled = True
        for state, entry in zip(reservation.states, reservation.entries, strict=True):
            state.in_flight -= 1
            used = min(tokens, entry.tokens)  # a reservation never grows: admitted requests stay admitted
            if entry.live:
                state.tokens -= entry.tokens - used
            entry.tokens = used

    def snapshot(self, bucket: Bucket) -> Snapshot:
        now = self._clock()
        state = self._state(bucket.name, now)
        rpm, tpm, _ = bucket.limits
        reset = state.entries[-1].at + WINDOW_S - now if state.entries else 0.0
        return Snapshot(
            requests_left=max(0, rpm - len(state.entries)) if rpm is not None else 0,
            tokens_left=max(0, tpm - state.tokens) if tpm is not None else 0,
            reset_s=reset,
        )


def reset_text(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def rate_headers(store: LimitStore, bucket: Bucket) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers for a key's bucket (requests and tokens, each where it is limited)."""
    rpm, tpm, _ = bucket.limits
    if rpm is None and tpm is None:
        return []
    snap = store.snapshot(bucket)
    headers = []
    if rpm is not None:
        headers += [
            (b"x-ratelimit-limit-requests", str(rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(snap.requests_left).encode()),
            (b"x-ratelimit-reset-requests", reset_text(snap.reset_s).encode()),
        ]
    if tpm is not None:
        headers += [
            (b"x-ratelimit-limit-tokens", str(tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(snap.tokens_left).encode()),
            (b"x-ratelimit-reset-tokens", reset_text(snap.reset_s).encode()),
        ]
    return headers
