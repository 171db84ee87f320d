"""One generation request from start to end, however it reached the server: the one sequence every API uses.

`Pipeline.run` owns the whole of it, in this order:

1. **resolve and lease**: the key's model list and a cheap look at its limits first (a refusal costs no engine
   work), then a hold on an engine serving the model (loading it if need be; a deployment at its bounds
   refuses here, before any tokenizing);
2. **prepare**: the wire format's codec checks the request, tokenizes and renders it (`Prepared`);
3. **admit**: prompt + max_tokens reserved against the key's and the model's limits (429 if it does not fit),
   the prompt counted as waiting for the engine;
4. **run**: the codec's stream (handed back as `Events`) or its whole response;
5. **settle**: exactly once however the request ends (done, refused, failed, the client gone): the lease
   released, the reservation settled on the real count, usage, metrics and the access line's fields.

The adapters are thin: the Litestar handlers (`api.py`), the hot path that skips the handler machinery
(`fast.py`) and background tasks (`background.py`) each turn their input into a `Call` and the outcome into
their output. A wire format (chat, completions, embeddings, and every API added later) is a `Codec`: how to
prepare its request and render the engine's output, never a copy of this sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from bitinglip.cluster import EngineLookup, Lease
from bitinglip.core import RESPONSE_HEADERS, BitingLipError, Events, InvalidInput, get_logger
from bitinglip.gateway.accounting import Accounting
from bitinglip.gateway.aliases import ModelAliases
from bitinglip.gateway.serving import Codec, Tally

log = get_logger(__name__)


class ClientGone:
    """What `run` returns when the client left before a whole response was ready (status 499 in the books)."""

    __slots__ = ()


CLIENT_GONE = ClientGone()
Outcome = Events | msgspec.Struct | ClientGone


class GenerationRequest(Protocol):
    """What the pipeline reads of a decoded request itself; the rest is the codec's."""

    @property
    def model(self) -> str | None: ...

    @property
    def keep_alive(self) -> float | str | None: ...


@dataclass(slots=True)
class Call:
    """One request as the pipeline takes it, from any adapter."""

    codec: Codec
    request: GenerationRequest
    request_id: str  # the engine's request id: unique among the requests in flight
    # The request's state: the key the edge found (`key`), and what the access line adds (`log`), for HTTP the
    # scope's state; a background task's is its own.
    state: MutableMapping[str, Any] = field(default_factory=dict)
    # Returns when the client has gone away (an HTTP request's disconnect); None: nobody to leave.
    disconnected: Callable[[], Awaitable[None]] | None = None
    # A background task or batch line, for the key that queued it (`owner`): a background lease, usage and
    # metrics counted as for a live request, the key's per-minute limits not applied.
    background: bool = False
    owner: str = ""


class Pipeline:
    def __init__(self, engines: EngineLookup, accounting: Accounting, aliases: ModelAliases | None = None) -> None:
        self.engines = engines
        self.accounting = accounting
        self.aliases = aliases or ModelAliases()

    async def acquire(self, model: str | None, keep_alive: float | str | None, *, background: bool = False) -> Lease:
        """A hold on an engine serving ``model`` (loading it first if need be); release it when the response ends."""
        if not model:
            raise InvalidInput("you must provide a model parameter", param="model", code="missing_model")
        return await self.engines.acquire(model, keep_alive, background=background)

    async def lease(self, state: MutableMapping[str, Any], model: str | None) -> Lease:
        """A hold on an engine for work that is not a generation (tokenizing): the key's model list, then the
        lease; nothing to admit or count."""
        model = self.aliases.resolve(model)
        key = state.get("key")
        if key is not None:
            key.check_model(model or "")
        return await self.acquire(model, None)

    async def run(self, call: Call) -> Outcome:
        """The response: events to stream, a whole body, or `CLIENT_GONE`. Errors are raised, the books closed."""
        req = call.request
        if (bind := getattr(call.codec, "bind", None)) is not None:
            req = bind(req, call)  # the codec's request joined to what it needs of the caller (Responses: the key)
        model = self.aliases.resolve(req.model)  # what an alias stands for: keys, limits and usage see that model
        exchange = self.accounting.begin(call.state, model, owner=call.owner if call.background else None)
        try:
            lease = await self.acquire(model, req.keep_alive, background=call.background)
        except BitingLipError as exc:
            exchange.fail(exc)
        exchange.leased()
        handed_over = False  # to the event stream, which releases the lease and closes the books when it ends
        tally = Tally(on_first=lease.started)
        try:
            prep = await call.codec.prepare(req, lease.engine)
            await exchange.admit(prep)
            if prep.asked_max_tokens is not None:
                clamped = f"{prep.asked_max_tokens}->{prep.max_tokens}"
                call.state.setdefault(RESPONSE_HEADERS, []).append((b"x-max-tokens-clamped", clamped.encode()))
                call.state.setdefault("log", {})["max_tokens_clamped"] = clamped
            lease.queue_prompt(exchange.prompt_tokens)
            if prep.stream:
                stream = getattr(call.codec, "stream", None)
                if stream is None:
                    raise InvalidInput("`stream` is not available for this request", param="stream")

                def closed() -> None:
                    lease.release()
                    exchange.finish(tally, 200)

                # Closed at once when the client goes away, so the engine request is aborted then, not at collection.
                handed_over = True
                return Events(stream(prep, call.request_id, tally), on_close=closed)
            work = call.codec.complete(prep, call.request_id, tally)
            if call.disconnected is None:
                body = await work
            elif (raced := await _unless_gone(work, call.disconnected)) is None:
                log.info("request.client_gone", engine_request_id=call.request_id)
                exchange.finish(tally, 499)
                return CLIENT_GONE
            else:
                body = raced
            exchange.finish(tally, 200)
            return body
        except BitingLipError as exc:
            exchange.fail(exc, tally)
        except BaseException:
            exchange.finish(tally, 500)
            raise
        finally:
            if not handed_over:
                lease.release()


async def _unless_gone(
    work: Awaitable[msgspec.Struct], disconnected: Callable[[], Awaitable[None]]
) -> msgspec.Struct | None:
    """The work's result, or None when the client left first (the work is cancelled: its engine request aborted)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left first (or we are being cancelled)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return None if task.cancelled() else task.result()
