"""`/v1/embeddings`: one vector per input from an embedding deployment (vLLM's pooling runner).

Inputs are a string, a list of strings, token ids, or lists of token ids, as OpenAI takes them. Each input is
one engine request; all of a request's inputs go to the engine at once and are batched there.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import Any

from bitinglip.cluster import EngineClient
from bitinglip.core import InvalidInput
from bitinglip.gateway.protocol.embeddings import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from bitinglip.gateway.serving.base import Prepared, Serving, Tally, token_ids

MAX_INPUTS = 2048  # OpenAI's limit per request
INPUT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


def as_base64(vector: list[float]) -> str:
    """OpenAI's base64 form: the little-endian float32 bytes of the vector."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class EmbeddingServing:
    async def _inputs(self, given: Any, engine: EngineClient) -> list[tuple[list[int], str | None]]:
        if isinstance(given, str):
            given = [given]
        elif given and all(isinstance(x, int) and not isinstance(x, bool) for x in given):
            given = [given]
        if not given:
            raise InvalidInput(f"`input` must be non-empty: {INPUT_SHAPES}", param="input")
        if len(given) > MAX_INPUTS:
            raise InvalidInput(f"`input` takes at most {MAX_INPUTS} inputs, got {len(given)}", param="input")
        inputs: list[tuple[list[int], str | None]] = []
        for i, item in enumerate(given):
            if isinstance(item, str):
                if not item:
                    raise InvalidInput(f"input[{i}] is an empty string", param=f"input.{i}")
                inputs.append((await Serving.encode(engine, item, f"input.{i}"), item))
            elif isinstance(item, list):
                inputs.append((token_ids(item, f"input.{i}"), None))
            else:
                raise InvalidInput(f"`input` must be {INPUT_SHAPES}; input[{i}] is not", param=f"input.{i}")
            if len(inputs[-1][0]) > engine.max_model_len:
                raise InvalidInput(
                    f"This model's maximum context length is {engine.max_model_len} tokens. However, input[{i}] is "
                    f"{len(inputs[-1][0])} tokens. Please shorten it.",
                    param=f"input.{i}",
                    code="context_length_exceeded",
                )
        return inputs

    async def prepare(self, req: EmbeddingRequest, engine: EngineClient) -> Prepared:
        if not engine.embedding:
            raise InvalidInput(
                f"model {engine.served_name} does not serve embeddings (see `capabilities` in /v1/models)",
                param="model",
                code="wrong_model_kind",
            )
        if req.dimensions is not None and req.dimensions < 1:
            raise InvalidInput(f"`dimensions` must be at least 1, got {req.dimensions}", param="dimensions")
        return Prepared(
            model=req.model or "",
            engine=engine,
            prompts=await self._inputs(req.input, engine),
            params=req,
            n=1,
            max_tokens=0,
            stream=False,
            include_usage=False,
            logprobs=None,
            priority=req.priority,
        )

    async def complete(self, prep: Prepared, request_id: str, tally: Tally | None = None) -> EmbeddingResponse:
        req = prep.params
        assert isinstance(req, EmbeddingRequest)
        # Cancelled (the client left): gather cancels every input's engine request, which aborts it.
        vectors = await asyncio.gather(
            *(prep.engine.embed(ids, req.dimensions, f"{request_id}-{i}") for i, (ids, _) in enumerate(prep.prompts))
        )
        tokens = sum(len(ids) for ids, _ in prep.prompts)
        data = [
            Embedding(index=i, embedding=as_base64(v) if req.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ]
        return EmbeddingResponse(
            data=data, model=prep.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        )
