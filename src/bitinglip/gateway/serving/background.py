"""Chat and text completions as background work: the task kinds the app registers with the task queue.

A task's request goes through what a live request goes through (the same msgspec types, `prepare`, the
engine's checks), so a bad parameter fails a task or a batch line exactly as it would fail on `/v1`. It
holds a background lease, which the cluster counts apart so the queue can yield to interactive requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from bitinglip.cluster import EngineClient, Lease
from bitinglip.core import InvalidInput, validation_path
from bitinglip.gateway import protocol as p
from bitinglip.gateway.serving.base import Prepared, Serving
from bitinglip.gateway.serving.chat import ChatServing
from bitinglip.gateway.serving.completion import CompletionServing
from bitinglip.tasks import TaskKind

R = TypeVar("R", p.ChatCompletionRequest, p.CompletionRequest)


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

    def kinds(self) -> dict[str, TaskKind]:
        return {
            "chat": TaskKind(run=self.chat, target=model_of, endpoint="/v1/chat/completions"),
            "completion": TaskKind(run=self.completion, target=model_of, endpoint="/v1/completions"),
        }

    async def chat(self, payload: dict[str, Any], request_id: str) -> msgspec.Struct:
        req = decode(payload, p.ChatCompletionRequest)
        return await self._run(
            req, request_id, self.chat_serving, lambda engine: self.chat_serving.prepare(req, engine)
        )

    async def completion(self, payload: dict[str, Any], request_id: str) -> msgspec.Struct:
        req = decode(payload, p.CompletionRequest)
        serving = self.completion_serving
        return await self._run(req, request_id, serving, lambda engine: serving.prepare(req, engine))

    async def _run(
        self,
        req: p.ChatCompletionRequest | p.CompletionRequest,
        request_id: str,
        serving: Serving,
        prepare: Callable[[EngineClient], Awaitable[Prepared]],
    ) -> msgspec.Struct:
        lease = await self.acquire(req.model, req.keep_alive, background=True)
        try:
            prep = await prepare(lease.engine)
            return await serving.complete(prep, request_id)
        finally:
            lease.release()
