"""A generation request's books: may this key use this model, is it under its limits, and what it used.

`Accounting.begin` is called once the model is known (before the engine is asked for anything): the key's
model list (403) and a cheap check of its buckets (429). `Exchange.admit`, once the prompt is tokenized,
reserves prompt + max_tokens in every bucket. `Exchange.finish` runs exactly once however the request ends
(done, failed, refused, the client gone): it settles the reservation on the real count, adds to usage and
metrics, and puts the request's numbers on its access-log line. Nothing here writes to disk; only a shared
store (several instances on PostgreSQL) awaits, in `admit`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, NoReturn

from bitinglip.core import BitingLipError, Forbidden, GatewaySettings, RateLimited
from bitinglip.gateway.keys import ApiKey, Headroom
from bitinglip.gateway.limits import Bucket, Limits, LimitStore, Reservation, rate_headers
from bitinglip.gateway.metrics import Metrics
from bitinglip.gateway.serving import Prepared, Tally
from bitinglip.gateway.usage import UsageRecorder

# The model label of a request refused before an engine was found for it (an unknown or forbidden model, or one
# refused before its lease): the metrics and usage carry no model name a client made up.
UNKNOWN_MODEL = "(unknown)"
MAX_LOGGED_MODEL = 200  # characters of a requested model name the access line keeps


def key_bucket(key: ApiKey) -> Bucket:
    return Bucket(f"key {key.id}", Limits(key.rpm, key.tpm, key.max_concurrent))


class Accounting:
    def __init__(self, limits: LimitStore, usage: UsageRecorder, metrics: Metrics, settings: GatewaySettings) -> None:
        self.limits = limits
        self.usage = usage
        self.metrics = metrics
        self.model_limits = {
            name: Bucket(f"model {name}", Limits(m.rpm, m.tpm, m.max_concurrent))
            for name, m in settings.model_limits.items()
        }
        # Models a lease was given for: the only model names the metrics and usage take as labels.
        self.served: set[str] = set()

    def label(self, model: str) -> str:
        return model if model in self.served else UNKNOWN_MODEL

    def rate_headers(self, key: ApiKey) -> list[tuple[bytes, bytes]]:
        return rate_headers(self.limits, key_bucket(key))

    def headroom(self, key: ApiKey) -> Headroom | None:
        """What the key may still send this minute, where it is limited (None: no rpm or tpm)."""
        if key.rpm is None and key.tpm is None:
            return None
        snap = self.limits.snapshot(key_bucket(key))
        return Headroom(
            requests_left=snap.requests_left if key.rpm is not None else None,
            tokens_left=snap.tokens_left if key.tpm is not None else None,
            reset_s=round(snap.reset_s, 3),
        )

    def begin(self, state: MutableMapping[str, Any], model: str | None, *, owner: str | None = None) -> Exchange:
        """Open the books of a request for ``model`` made with the key in ``state`` (none while auth is off).

        ``owner``: background work queued by that key (its model list was checked when it was queued): counted
        in its usage and the metrics as a live request is, its per-minute limits not applied."""
        model = model or ""
        state["model"] = self.label(model)
        if owner is not None:
            return Exchange(self, state, owner, model)
        key: ApiKey | None = state.get("key")
        exchange = Exchange(self, state, key.id if key is not None else "", model)
        if key is not None:
            try:
                key.check_model(model)
            except Forbidden as exc:
                exchange.fail(exc)
        buckets = []
        if key is not None and key.limited:
            buckets.append(key_bucket(key))
        if (bucket := self.model_limits.get(model)) is not None:
            buckets.append(bucket)
        exchange.buckets = buckets
        if buckets:
            try:
                self.limits.check(buckets)
            except RateLimited as exc:
                exchange.fail(exc)
        return exchange


class Exchange:
    __slots__ = ("accounting", "buckets", "finished", "key_id", "model", "prompt_tokens", "reservation", "state")

    def __init__(self, accounting: Accounting, state: MutableMapping[str, Any], key_id: str, model: str) -> None:
        self.accounting = accounting
        self.state = state
        self.key_id = key_id
        self.model = model
        self.buckets: list[Bucket] = []
        self.reservation: Reservation | None = None
        self.prompt_tokens = 0
        self.finished = False

    def leased(self) -> None:
        """An engine serves the model: from now on its name is a label."""
        self.accounting.served.add(self.model)
        self.state["model"] = self.model

    async def admit(self, prep: Prepared) -> None:
        """Reserve what the request may use at most (prompt + max_tokens per sequence); 429 if it does not fit."""
        self.prompt_tokens = sum(len(ids) for ids, _ in prep.prompts)
        if self.buckets:
            most = self.prompt_tokens + len(prep.prompts) * prep.n * prep.max_tokens
            try:
                self.reservation = await self.accounting.limits.reserve(self.buckets, most)
            except RateLimited as exc:
                self.fail(exc)

    def fail(self, exc: BitingLipError, tally: Tally | None = None) -> NoReturn:
        """End the books on an error, then raise it (a refusal is also counted as one)."""
        if isinstance(exc, RateLimited) or exc.code == "overloaded":
            reason = "rate_limited" if isinstance(exc, RateLimited) else "overloaded"
            self.accounting.metrics.refusals.labels(reason, self.accounting.label(self.model)).inc()
        self.finish(tally, exc.status)
        raise exc

    def finish(self, tally: Tally | None, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        completion = tally.completion_tokens if tally is not None else 0
        if self.reservation is not None:
            self.accounting.limits.settle(self.reservation, self.prompt_tokens + completion)
        error = status >= 400 or (tally is not None and tally.error)
        label = self.accounting.label(self.model)
        if label != UNKNOWN_MODEL:  # usage rows only for models that exist
            self.accounting.usage.record(self.key_id, self.model, self.prompt_tokens, completion, error)
        ttft = None
        if tally is not None and tally.first_token_at is not None and "started" in self.state:
            ttft = tally.first_token_at - self.state["started"]
        self.accounting.metrics.observe_generation(label, self.prompt_tokens, completion, ttft)
        self.state.setdefault("log", {}).update(
            model=self.model[:MAX_LOGGED_MODEL],
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            ttft_ms=round(ttft * 1000, 1) if ttft is not None else None,
        )
