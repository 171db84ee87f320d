"""Chat, text completions and Responses as background work: the task kinds the app registers with the task queue.

A task's request goes through the pipeline a live request goes through (the same msgspec types, `prepare`,
the engine's checks), so a bad parameter fails a task or a batch line exactly as it would fail on `/v1`. It
holds a background lease, which the cluster counts apart so the queue can yield to interactive requests; its
tokens count in the usage and metrics of the key that queued it (not against the key's per-minute limits).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from bitinglip.core import InvalidInput, validation_path
from bitinglip.gateway.pipeline import Call, Pipeline
from bitinglip.gateway.protocol.chat import ChatCompletionRequest
from bitinglip.gateway.protocol.completion import CompletionRequest
from bitinglip.gateway.protocol.responses import ResponsesRequest
from bitinglip.gateway.serving import ChatServing, Codec, CompletionServing, ResponsesServing
from bitinglip.tasks import TaskKind

R = TypeVar("R", ChatCompletionRequest, CompletionRequest, ResponsesRequest)


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
    """Runs one task's request through the pipeline and returns the response body /v1 would have sent."""

    def __init__(
        self,
        pipeline: Pipeline,
        chat: ChatServing,
        completion: CompletionServing,
        responses: ResponsesServing | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.chat_codec = chat
        self.completion_codec = completion
        self.responses_codec = responses

    def kinds(self) -> dict[str, TaskKind]:
        kinds = {
            "chat": TaskKind(run=self.chat, target=model_of, endpoint="/v1/chat/completions"),
            "completion": TaskKind(run=self.completion, target=model_of, endpoint="/v1/completions"),
        }
        if self.responses_codec is not None:
            kinds["responses"] = TaskKind(run=self.responses, target=model_of, endpoint="/v1/responses")
        return kinds

    async def chat(self, payload: dict[str, Any], request_id: str, owner: str = "") -> msgspec.Struct:
        return await self._run(self.chat_codec, decode(payload, ChatCompletionRequest), request_id, owner)

    async def completion(self, payload: dict[str, Any], request_id: str, owner: str = "") -> msgspec.Struct:
        return await self._run(self.completion_codec, decode(payload, CompletionRequest), request_id, owner)

    async def responses(self, payload: dict[str, Any], request_id: str, owner: str = "") -> msgspec.Struct:
        """A Responses request, stored (unless `store` is false) as the key that queued it: its own to read back."""
        assert self.responses_codec is not None
        return await self._run(self.responses_codec, decode(payload, ResponsesRequest), request_id, owner)

    async def _run(
        self,
        codec: Codec,
        req: ChatCompletionRequest | CompletionRequest | ResponsesRequest,
        request_id: str,
        owner: str,
    ) -> msgspec.Struct:
        outcome = await self.pipeline.run(Call(codec, req, request_id, background=True, owner=owner))
        assert isinstance(outcome, msgspec.Struct)  # `decode` refuses `stream`, and nobody can leave
        return outcome
