"""`/tokenize` and `/detokenize` on the real engine and tokenizer: counts match what requests are billed."""

from __future__ import annotations

import httpx
import openai

from e2e.conftest import EMBEDDING_MODEL, MODEL, Server

TEXT = "Tokenizers split text — even naïve text — into ids."


def test_tokenize_counts_match_usage_and_detokenize_round_trips(server: Server, client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}]
    counted = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "messages": messages}).json()
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert chat.usage is not None and counted["count"] == chat.usage.prompt_tokens == len(counted["tokens"])
    assert counted["max_model_len"] == 2048

    prompt = httpx.post(f"{server.url}/tokenize", json={"model": MODEL, "prompt": TEXT, "return_token_strs": True})
    body = prompt.json()
    done = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=1)
    assert done.usage is not None and body["count"] == done.usage.prompt_tokens
    assert len(body["token_strs"]) == body["count"]
    back = httpx.post(f"{server.url}/detokenize", json={"model": MODEL, "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": TEXT}


def test_bad_tokens_and_unknown_models_get_the_envelope(server: Server) -> None:
    bad = httpx.post(f"{server.url}/detokenize", json={"model": MODEL, "tokens": [1, 10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    missing = httpx.post(f"{server.url}/tokenize", json={"model": "no-such-model", "prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_models_say_their_context_length_and_what_they_serve(server: Server, client: openai.OpenAI) -> None:
    card = httpx.get(f"{server.url}/v1/models/{MODEL}").json()
    assert card["max_model_len"] == 2048
    assert card["capabilities"] == {
        "chat": True,  # the tiny model has a chat template
        "completions": True,
        "tools": True,  # settings/default.toml names the hermes tool parser, the tiny model's format
        "reasoning": False,
        "structured_outputs": True,
        "embeddings": False,
    }
    embedding = httpx.get(f"{server.url}/v1/models/{EMBEDDING_MODEL}").json()
    assert embedding["capabilities"] == {
        "chat": False,
        "completions": False,
        "tools": False,
        "reasoning": False,
        "structured_outputs": False,
        "embeddings": True,
    }
    served = {m.id: m.model_extra["capabilities"]["chat"] for m in client.models.list().data}  # type: ignore[index]
    assert served == {MODEL: True, EMBEDDING_MODEL: False}
