"""The pipeline every generation goes through: background work counted as live work is, the books closed once
however a request ends, the lease always given back."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_support import Gateway, build_gateway
from litestar.testing import TestClient

from bitinglip.core import InvalidInput, NotFound
from bitinglip.gateway import Background, Call
from bitinglip.gateway.protocol.chat import ChatCompletionRequest, ChatMessage
from doubles import FakeEngines, ScriptedEngine


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    return build_gateway(ScriptedEngine(), tmp_path)


def _engines(gateway: Gateway) -> FakeEngines:
    engines = gateway.pipeline.engines
    assert isinstance(engines, FakeEngines)
    return engines


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def test_background_work_is_counted_in_its_owners_usage_and_the_metrics(gateway: Gateway) -> None:
    await gateway.db.start()
    try:
        background = Background(gateway.pipeline, gateway.serving.chat, gateway.serving.completion)
        chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        body = await background.kinds()["chat"].run(chat, "task-1", "key-7")
        assert body.choices[0].message.content == "Hello there friend"  # type: ignore[attr-defined]
        engines = _engines(gateway)
        assert engines.background == 1 and engines.released == ["fake"]  # a background lease, given back
        report = await gateway.usage.report(key_id="key-7")
        assert [(r.model, r.requests, r.completion_tokens, r.errors) for r in report.data] == [("fake", 1, 3, 0)]
        metrics = (await gateway.metrics.render()).decode()
        assert _metric(metrics, "bitinglip_completion_tokens_total") == 3
        assert _metric(metrics, "bitinglip_prompt_tokens_total") == report.data[0].prompt_tokens > 0
    finally:
        await gateway.db.stop()


async def test_a_background_request_that_fails_is_counted_as_an_error_and_gives_its_lease_back(
    gateway: Gateway,
) -> None:
    await gateway.db.start()
    try:
        background = Background(gateway.pipeline, gateway.serving.chat, gateway.serving.completion)
        bad = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}
        with pytest.raises(InvalidInput) as refused:
            await background.kinds()["chat"].run(bad, "task-2", "key-7")
        assert refused.value.param == "temperature"
        with pytest.raises(InvalidInput, match="stream"):
            await background.kinds()["chat"].run({**bad, "stream": True}, "task-3", "key-7")
        assert _engines(gateway).released == ["fake"]
        report = await gateway.usage.report(key_id="key-7")
        assert [(r.requests, r.errors) for r in report.data] == [(1, 1)]
    finally:
        await gateway.db.stop()


async def test_a_request_for_a_model_nobody_serves_takes_no_lease_and_is_closed_once(gateway: Gateway) -> None:
    state: dict[str, object] = {}
    req = ChatCompletionRequest(model="nope", messages=[ChatMessage(role="user", content="hi")])
    with pytest.raises(NotFound):
        await gateway.pipeline.run(Call(gateway.serving.chat, req, "r-1", state))
    assert _engines(gateway).acquired == [] and state["log"] == {  # the access line says what happened
        "model": "nope",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "ttft_ms": None,
    }


def test_made_up_model_names_grow_neither_the_metrics_nor_the_usage(gateway: Gateway) -> None:
    with TestClient(gateway.app) as client:
        hi = [{"role": "user", "content": "hi"}]
        assert client.post("/v1/chat/completions", json={"model": "fake", "messages": hi, "max_tokens": 2}).is_success
        client.get("/metrics")  # the scrape route's own series, counted from the next scrape on
        sizes = []
        for batch in range(2):
            for i in range(15):
                made_up = f"m{batch}-{i}-" + "x" * 600
                refused = client.post("/v1/chat/completions", json={"model": made_up, "messages": hi})
                assert refused.status_code == 404
            after = client.get("/metrics").text
            sizes.append(after.count("\n"))
        assert sizes[0] == sizes[1]  # 15 more made-up models: not one more series
        assert "xxxx" not in after and 'model="(unknown)"' in after
        models = {row["model"] for row in client.get("/api/usage").json()["data"]}
        assert models == {"fake"}


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/tokenize"])
def test_json_nested_ten_thousand_deep_is_a_400(gateway: Gateway, route: str) -> None:
    deep = "{" + '"a":{' * 10_000 + "}" * 10_001
    body = '{"model": "fake", "messages": [{"role": "user", "content": "hi"}], "structured_outputs": ' + deep + "}"
    if route == "/tokenize":
        body = '{"model": "fake", "prompt": "hi", "tools": [{"type": "function", "function": ' + deep + "}]}"
    with TestClient(gateway.app) as client:
        refused = client.post(route, content=body, headers={"content-type": "application/json"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json"
        assert "nested too deeply" in refused.json()["error"]["message"]
