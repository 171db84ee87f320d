"""The OpenAI edge against a scripted engine: wire format, validation, errors, leases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_support import Gateway, build_gateway
from litestar.testing import TestClient

from bitinglip.gateway import OpenAIServing
from doubles import FakeEngines, ScriptedEngine


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def gateway(engine: ScriptedEngine, tmp_path: Path) -> Gateway:
    return build_gateway(engine, tmp_path)


@pytest.fixture
def serving(gateway: Gateway) -> OpenAIServing:
    return gateway.serving


@pytest.fixture
def client(gateway: Gateway) -> Iterator[TestClient]:
    with TestClient(gateway.app) as c:
        yield c


def chat(**extra: object) -> dict[str, object]:
    return {"model": "fake", "messages": [{"role": "user", "content": "hi"}], **extra}


def events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


def test_chat_completion_shape_and_usage(client: TestClient, engine: ScriptedEngine) -> None:
    r = client.post("/v1/chat/completions", json=chat(max_tokens=3))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there friend"}
    assert body["choices"][0]["finish_reason"] == "length"
    prompt_tokens = len(engine.render_chat([{"role": "user", "content": "hi"}]))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 3, "total_tokens": prompt_tokens + 3}


def test_max_completion_tokens_wins_and_default_fills_context(client: TestClient, engine: ScriptedEngine) -> None:
    client.post("/v1/chat/completions", json=chat(max_completion_tokens=2, max_tokens=9))
    assert engine.seen[-1]["params"]["max_tokens"] == 2
    client.post("/v1/chat/completions", json=chat())
    prompt_len = len(engine.seen[-1]["prompt_ids"])
    assert engine.seen[-1]["params"]["max_tokens"] == engine.max_model_len - prompt_len


def test_chat_stream_events_role_first_usage_last(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data = events(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]) == "Hello there friend"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_completion_n_and_several_prompts(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "fake", "prompt": ["a", "b"], "n": 2, "max_tokens": 2})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert all(c["text"] == "Hello there" for c in choices)
    assert r.json()["usage"]["completion_tokens"] == 8


def test_completion_logprobs_shape(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "a", "max_tokens": 2, "logprobs": 2})
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] == ["Hello", " there"]
    assert lp["token_logprobs"] == [-0.5, -0.5]
    assert lp["text_offset"] == [0, 5]
    assert lp["top_logprobs"][0] == {"Hello": -0.5, "x": -1.5}


def test_chat_logprobs_shape(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json=chat(max_tokens=1, logprobs=True, top_logprobs=1))
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert content == [
        {
            "token": "Hello",
            "logprob": -0.5,
            "bytes": list(b"Hello"),
            "top_logprobs": [{"token": "Hello", "logprob": -0.5, "bytes": list(b"Hello")}],
        }
    ]


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"", 400, None, "empty"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model", "model"),
        (json.dumps(chat(model="nope")).encode(), 404, "model", "nope"),
        (json.dumps({"model": "fake", "messages": []}).encode(), 400, "messages", "non-empty"),
        (json.dumps(chat(temperature=3)).encode(), 400, "temperature", "between"),
        (json.dumps(chat(top_p=0)).encode(), 400, "top_p", "between"),
        (json.dumps(chat(n=0)).encode(), 400, "n", "between"),
        (json.dumps(chat(max_tokens=0)).encode(), 400, "max_tokens", "at least 1"),
        (json.dumps(chat(max_tokens=1000)).encode(), 400, "max_tokens", "maximum context length is 64"),
        (json.dumps(chat(max_tokens="ten")).encode(), 400, "max_tokens", "Expected `int | null`"),
        (json.dumps(chat(top_logprobs=3)).encode(), 400, "top_logprobs", "logprobs"),
        (json.dumps(chat(messages=[{"role": "wizard", "content": "x"}])).encode(), 400, "messages.0.role", "role"),
        (
            json.dumps(chat(messages=[{"role": "user", "content": "y" * 100}])).encode(),
            400,
            "messages",
            "context length",
        ),
    ],
)
def test_bad_chat_requests_get_the_openai_envelope(
    client: TestClient, body: bytes, status: int, param: str | None, fragment: str
) -> None:
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert fragment in error["message"]


@pytest.mark.parametrize("prompt", [None, "", [], [1.5], [True], {"a": 1}, [-1]])
def test_bad_prompts(client: TestClient, prompt: object) -> None:
    r = client.post("/v1/completions", json={"model": "fake", "prompt": prompt})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] in ("prompt", "prompt.0")  # the list item that is wrong, where there is one


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    r = client.get("/v1/nothing-here", headers={"X-Request-ID": "lost-1"})
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    assert r.headers["x-request-id"] == "lost-1"  # the edge wraps the whole app, not only matched routes
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_request_id_is_echoed_or_made(client: TestClient, engine: ScriptedEngine) -> None:
    r = client.post("/v1/chat/completions", json=chat(max_tokens=1), headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert engine.seen[-1]["request_id"].startswith("abc-123-")  # unique in the engine even if reused
    r = client.post("/v1/chat/completions", json=chat(max_tokens=1))
    assert len(r.headers["x-request-id"]) == 32
    assert r.json()["id"] == f"chatcmpl-{r.headers['x-request-id']}"


def test_models_list_and_retrieve(client: TestClient) -> None:
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["fake"]
    assert client.get("/v1/models/fake").json()["max_model_len"] == 64
    assert client.get("/v1/models/other").status_code == 404


def test_a_token_that_is_part_of_a_character_is_named_by_its_bytes(engine: ScriptedEngine) -> None:
    from bitinglip.gateway.serving.logprobs import token_repr
    from doubles import FakeLogprob

    assert token_repr(FakeLogprob(-1.0, 1, "\ufffd"), 0xE2, engine) == ("bytes:\\xe2", [0xE2], 1)
    assert token_repr(FakeLogprob(-1.0, 1, ""), 0xE2, engine) == ("bytes:\\xe2", [0xE2], 0)
    assert token_repr(FakeLogprob(-1.0, 1, "é"), 0xE9, engine) == ("é", [0xC3, 0xA9], 1)
    assert token_repr(FakeLogprob(-1.0, 1, ""), ord("a"), engine) == ("", [], 0)


def test_every_request_releases_its_hold_on_the_engine(client: TestClient, serving: OpenAIServing) -> None:
    engines = serving.engines
    assert isinstance(engines, FakeEngines)
    assert client.post("/v1/chat/completions", json=chat(max_tokens=2, keep_alive="10m")).status_code == 200
    r = client.post("/v1/completions", json={"model": "fake", "prompt": "x", "max_tokens": 2, "stream": True})
    assert r.status_code == 200 and events(r.text)[-1] == "[DONE]"
    bad = client.post("/v1/completions", json={"model": "fake", "prompt": "", "max_tokens": 2})
    assert bad.status_code == 400  # refused after the lease was taken: released all the same
    assert engines.acquired == [("fake", "10m"), ("fake", None), ("fake", None)]
    assert engines.released == ["fake", "fake", "fake"]
    models = client.get("/v1/models").json()["data"]
    assert models == [
        {
            "id": "fake",
            "created": models[0]["created"],
            "owned_by": "bitinglip",
            "object": "model",
            "max_model_len": 64,
            "root": "/models/fake",
            "parent": None,  # a base model (an adapter names its base, as `vllm serve` lists them)
            "status": "ready",
            "capabilities": {
                "chat": True,
                "completions": True,
                "tools": False,
                "reasoning": False,
                "structured_outputs": True,
                "embeddings": False,
            },
        }
    ]


def test_tokenize_counts_what_a_request_is_billed_and_detokenize_reverses_it(client: TestClient) -> None:
    chat_usage = client.post("/v1/chat/completions", json=chat(max_tokens=1)).json()["usage"]
    counted = client.post("/tokenize", json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
    assert counted.status_code == 200 and counted.json()["count"] == chat_usage["prompt_tokens"]
    assert counted.json()["max_model_len"] == 64
    text = client.post("/tokenize", json={"model": "fake", "prompt": "héllo", "return_token_strs": True}).json()
    done = client.post("/v1/completions", json={"model": "fake", "prompt": "héllo", "max_tokens": 1}).json()
    assert text["count"] == len(text["tokens"]) == done["usage"]["prompt_tokens"]
    assert "".join(text["token_strs"]) == "héllo"
    back = client.post("/detokenize", json={"model": "fake", "tokens": text["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": "héllo"}


@pytest.mark.parametrize(
    "body",
    [{"model": "fake"}, {"model": "fake", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}],
)
def test_tokenize_needs_exactly_one_of_prompt_and_messages(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/tokenize", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert client.post("/tokenize", json={"model": "nope", "prompt": "a"}).status_code == 404
    assert client.post("/detokenize", json={"model": "fake", "tokens": "abc"}).status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(functions=[{"name": "f"}]), "functions"),
        (chat(logit_bias={"1": 5}), "logit_bias"),
        (
            {"model": "fake", "messages": [{"role": "user", "content": "hi", "audio": {"id": "x"}}]},
            "messages.0.audio",
        ),
        (chat(stream=True, stream_options={"include_usage": True, "extra": 1}), "stream_options.extra"),
    ],
)
def test_a_field_the_server_does_not_serve_is_refused_by_name(
    client: TestClient, body: dict[str, object], param: str
) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == "unsupported_parameter"
    completion = client.post("/v1/completions", json={"model": "fake", "prompt": "x", "suffix": "y"})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "suffix"
