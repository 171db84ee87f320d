"""The limiter on its own, with a clock the test moves: exact over every 60 s window, never refusing what fits."""

from __future__ import annotations

import random

import pytest

from bitinglip.core import RateLimited
from bitinglip.gateway.limits import WINDOW_S, Bucket, Limits, MemoryLimitStore, rate_headers, reset_text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_requests_per_minute_refuse_the_one_over_and_say_when(clock: Clock) -> None:
    store = MemoryLimitStore(clock)
    bucket = Bucket("key k", Limits(rpm=3))
    for _ in range(3):
        store.settle(store.take([bucket], 10), 10)
        clock.now += 10
    with pytest.raises(RateLimited) as refused:
        store.take([bucket], 10)
    # The first request was made 30 s ago: its place frees 30 s from now.
    assert refused.value.retry_after == 30 and "requests per minute" in refused.value.message
    clock.now += 30
    store.take([bucket], 10)


def test_tokens_reserve_max_tokens_then_settle_on_the_real_count(clock: Clock) -> None:
    store = MemoryLimitStore(clock)
    bucket = Bucket("key k", Limits(tpm=1000))
    first = store.take([bucket], 600)  # prompt 100 + max_tokens 500
    with pytest.raises(RateLimited):
        store.take([bucket], 600)  # 1200 might be used: refused while the first runs
    store.settle(first, 150)  # it used 150
    second = store.take([bucket], 600)  # 750 now fits
    store.settle(second, 600)
    assert store.snapshot(bucket).tokens_left == 250
    store.take([bucket], 250)  # exactly at the limit: admitted
    with pytest.raises(RateLimited):
        store.take([bucket], 1)


def test_a_request_larger_than_the_limit_is_refused_without_a_retry_hint(clock: Clock) -> None:
    store = MemoryLimitStore(clock)
    with pytest.raises(RateLimited) as refused:
        store.take([Bucket("key k", Limits(tpm=100))], 101)
    assert refused.value.code == "request_too_large" and refused.value.retry_after is None


def test_concurrency_frees_a_slot_when_a_request_ends(clock: Clock) -> None:
    store = MemoryLimitStore(clock)
    bucket = Bucket("key k", Limits(max_concurrent=2))
    a, _ = store.take([bucket], 1), store.take([bucket], 1)
    with pytest.raises(RateLimited) as refused:
        store.check([bucket])
    assert refused.value.code == "concurrency_limit_exceeded"
    store.settle(a, 1)
    store.settle(a, 1)  # settling twice frees one slot, not two
    store.take([bucket], 1)
    with pytest.raises(RateLimited):
        store.take([bucket], 1)


def test_every_bucket_must_fit_and_a_refusal_takes_nothing(clock: Clock) -> None:
    store = MemoryLimitStore(clock)
    key, model = Bucket("key k", Limits(rpm=10)), Bucket("model m", Limits(rpm=1))
    store.take([key, model], 1)
    with pytest.raises(RateLimited) as refused:
        store.take([key, model], 1)
    assert "model m" in refused.value.message
    assert store.snapshot(key).requests_left == 9  # the refused request was not counted against the key


def test_random_traffic_never_exceeds_the_limit_in_any_window_nor_is_refused_with_room(clock: Clock) -> None:
    """Requests arrive at random, each reserving prompt + max_tokens and using a random part of it. Every
    refusal is checked against what the window held at that moment, and afterwards every 60 s window of the
    admitted requests against the limits."""
    rng = random.Random(7)
    store = MemoryLimitStore(clock)
    tpm, rpm = 5000, 40
    bucket = Bucket("key k", Limits(rpm=rpm, tpm=tpm))
    admitted: list[list[float]] = []  # [time, tokens counted: reserved while running, used once settled]
    running: list[tuple[object, list[float], int]] = []  # (reservation, its entry, tokens it will use)
    refusals = 0
    for _ in range(3000):
        clock.now += rng.expovariate(1.5)
        for item in [r for r in running if rng.random() < 0.3]:
            running.remove(item)
            reservation, entry, use = item
            store.settle(reservation, use)  # type: ignore[arg-type]
            entry[1] = use
        reserve = rng.randint(20, 400)
        window = [e for e in admitted if e[0] > clock.now - WINDOW_S]
        try:
            reservation = store.take([bucket], reserve)
        except RateLimited:
            refusals += 1
            held = sum(e[1] for e in window)
            assert len(window) >= rpm or held + reserve > tpm, "refused while the window had room"
            continue
        entry = [clock.now, float(reserve)]
        admitted.append(entry)
        running.append((reservation, entry, rng.randint(1, reserve)))
    assert refusals > 100  # the test did push against the limits
    for start, _ in admitted:
        inside = [tokens for t, tokens in admitted if start <= t < start + WINDOW_S]
        assert len(inside) <= rpm
        assert sum(inside) <= tpm


def test_rate_headers_as_openai_sends_them(clock: Clock) -> None:
    store = MemoryLimitStore(clock)
    bucket = Bucket("key k", Limits(rpm=60, tpm=1000))
    store.settle(store.take([bucket], 300), 120)
    clock.now += 15
    headers = dict(rate_headers(store, bucket))
    assert headers[b"x-ratelimit-limit-requests"] == b"60"
    assert headers[b"x-ratelimit-remaining-requests"] == b"59"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"880"
    assert headers[b"x-ratelimit-reset-tokens"] == b"45s"
    assert rate_headers(store, Bucket("key n", Limits(max_concurrent=3))) == []
    assert [reset_text(s) for s in (0.02, 1.5, 360)] == ["20ms", "1.5s", "6m0s"]
