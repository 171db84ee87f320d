"""Chat and text completions as background work: the task kinds the app registers with the task queue.

A task's request goes through what a live request goes through (the same msgspec types, `prepare`, the
engine's checks), so a bad parameter fails a task or a batch line exactly as it would fail on `/v1`. It
holds a background lease, which the cluster counts apart so the queue can yield to interactive requests, and
its tokens count in the usage of the key that queued it (not against the key's per-minute limits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from bitinglip.cluster import EngineClient, Lease
from bitinglip.core import InvalidInput, validation_path
from bitinglip.gateway.protocol.chat import ChatCompletionRequest
from bitinglip.gateway.protocol.completion import CompletionRequest
from bitinglip.gateway.serving.base import Prepared, Serving, Tally
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.completion import CompletionServing
from bitinglip.tasks import TaskKind

R = TypeVar("R", ChatCompletionRequest, CompletionRequest)


def model_of(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("you must provide a model parameter", param="model", code="missing_model")
    return model


def decode(payload: dict[str, Any], kind: type[R]) -> R:
    """The request as the live route would decode it; a wrong field is an InvalidInput naming it."""
    try:
        request = msgspec.convert(payload, kind)
    except msgspec.ValidationError as exc:
        param, message = validation_path(str(exc))
        text = f"invalid request: {message}" + (f" - at `{param}`" if param else "")
        raise InvalidInput(text, param=param or None) from exc
    if request.stream:
        raise InvalidInput(
            "`stream` is not available for background requests; the result is kept whole", param="stream"
        )
    return request


class Background:
    """Runs one task's request on a background lease and returns the response body /v1 would have sent."""

    def __init__(
        self, acquire: Callable[..., Awaitable[Lease]], chat: ChatServing, completion: CompletionServing
    ) -> None:
        self.acquire = acquire
        self.chat_serving = chat
        self.completion_serving = completion
        # (owner, model, prompt tokens, completion tokens, error): the app points it at the usage counters.
        self.record: Callable[[str, str, int, int, bool], None] | None = None

    def kinds(self) -> dict[str, TaskKind]:
        return {
            "chat": TaskKind(run=self.chat, target=model_of, endpoint="/v1/chat/completions"),
            "completion": TaskKind(run=self.completion, target=model_of, endpoint="/v1/completions"),
        }

    async def chat(self, payload: dict[str, Any], request_id: str, owner: str = "") -> msgspec.Struct:
        req = decode(payload, ChatCompletionRequest)
        serving = self.chat_serving
        return await self._run(req, request_id, owner, serving, lambda engine: serving.prepare(req, engine))

    async def completion(self, payload: dict[str, Any], request_id: str, owner: str = "") -> msgspec.Struct:
        req = decode(payload, CompletionRequest)
        serving = self.completion_serving
        return await self._run(req, request_id, owner, serving, lambda engine: serving.prepare(req, engine))

    async def _run(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        request_id: str,
        owner: str,
        serving: Serving,
        prepare: Callable[[EngineClient], Awaitable[Prepared]],
    ) -> msgspec.Struct:
        """The request's usage counts for the key that queued it, as a live request's does."""
        tally, prompt_tokens, error = Tally(), 0, True
        lease = await self.acquire(req.model, req.keep_alive, background=True)
        try:
            prep = await prepare(lease.engine)
            prompt_tokens = sum(len(ids) for ids, _ in prep.prompts)
            response = await serving.complete(prep, request_id, tally)
            error = False
            return response
        finally:
            lease.release()
            if self.record is not None:
                self.record(owner, req.model or "", prompt_tokens, tally.completion_tokens, error)
