"""/v1/embeddings with the official openai client on the real pooling engine (tiny-embed, served beside chat)."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import openai
import pytest

from e2e.conftest import EMBEDDING_MODEL, MODEL, Server

TEXTS = ["the quick brown fox", "a slow green river", "the quick brown fox"]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_a_batch_of_inputs_in_both_encodings(client: openai.OpenAI) -> None:
    r = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS)
    assert r.object == "list" and r.model == EMBEDDING_MODEL
    assert [d.index for d in r.data] == [0, 1, 2]
    vectors = [d.embedding for d in r.data]
    assert all(len(v) == 256 for v in vectors)  # the model's hidden size
    assert all(abs(norm(v) - 1.0) < 1e-4 for v in vectors)  # normalized
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]  # the same input, the same vector
    assert r.usage.prompt_tokens == r.usage.total_tokens > 3
    # base64: the same numbers as little-endian float32 (the client hands the text back as it came).
    b = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS, encoding_format="base64")
    for plain, encoded in zip(vectors, b.data, strict=True):
        assert isinstance(encoded.embedding, str)
        raw = base64.b64decode(encoded.embedding)
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(plain, abs=1e-7)


def test_token_id_inputs_match_the_text_they_spell(server: Server, client: openai.OpenAI) -> None:
    ids = httpx.post(f"{server.url}/tokenize", json={"model": EMBEDDING_MODEL, "prompt": TEXTS[0]}).json()["tokens"]
    by_text = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS[0]).data[0].embedding
    by_ids = client.embeddings.create(model=EMBEDDING_MODEL, input=[ids, ids[:2]])
    assert by_ids.data[0].embedding == pytest.approx(by_text, abs=1e-6)
    assert by_ids.usage.prompt_tokens == len(ids) + 2
    single = client.embeddings.create(model=EMBEDDING_MODEL, input=ids)  # one list of ids is one input
    assert len(single.data) == 1


def test_dimensions_shorten_the_vector_where_the_model_allows(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model=EMBEDDING_MODEL, input="hello").data[0].embedding
    short = client.embeddings.create(model=EMBEDDING_MODEL, input="hello", dimensions=64).data[0].embedding
    assert len(short) == 64 and abs(norm(short) - 1.0) < 1e-4
    # Matryoshka: the first 64 numbers, renormalized.
    head = full[:64]
    assert short == pytest.approx([x / norm(head) for x in head], abs=1e-4)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input.0"),
        ({"input": "word " * 3000}, "input.0"),
        ({"input": [[]]}, "input.0"),
        ({"input": [1.5]}, "input.0"),
        ({"input": "hi", "dimensions": 100}, "dimensions"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "hi", "model": MODEL}, "model"),
    ],
)
def test_bad_embedding_requests_are_a_400(server: Server, body: dict[str, object], param: str) -> None:
    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": EMBEDDING_MODEL} | body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    if "word" in str(body.get("input")):
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_the_embedding_model_refuses_generation(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.chat.completions.create(model=EMBEDDING_MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.completions.create(model=EMBEDDING_MODEL, prompt="hi")
