"""Bad input over plain HTTP, request ids, readiness, and client disconnects aborting engine work."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from e2e.conftest import MODEL, Server

CHAT = "/v1/chat/completions"


def post(server: Server, path: str, body: bytes | dict, **kw: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}{path}", content=content, headers={"content-type": "application/json"}, timeout=60, **kw
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        (CHAT, b'{"model": MODEL, "messages": [', 400, None),
        (CHAT, {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        (CHAT, {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        (CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "word " * 2100}]}, 400, "messages"),
        (
            CHAT,
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000},
            400,
            "max_tokens",
        ),
        (
            CHAT,
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -1},
            400,
            "temperature",
        ),
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 1000}, 400, "n"),
        ("/v1/completions", {"model": MODEL, "prompt": "word " * 2100}, 400, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 50}, 400, "logprobs"),
    ],
)
def test_bad_input_is_a_4xx_in_the_openai_envelope(
    server: Server, path: str, body: bytes | dict, status: int, param: str | None
) -> None:
    r = post(server, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_request_id_round_trip(server: Server) -> None:
    r = httpx.get(f"{server.url}/v1/models", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    deadline = time.monotonic() + 5  # the access line is written just after the response goes out
    while '"request_id": "trace-42"' not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in server.log().splitlines() if '"request_id": "trace-42"' in line)
    assert json.loads(line)["path"] == "/v1/models"


def test_health_and_ready(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready["ready"] is True and ready["deployments"][0]["state"] == "ready"


def engine_status(server: Server) -> dict:
    return httpx.get(f"{server.url}/api/cluster", timeout=10).json()["deployments"][0]["stats"]


def wait_idle(server: Server, timeout_s: float = 15) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if engine_status(server)["unfinished"] == 0:
            return time.monotonic() - began
        time.sleep(0.2)
    raise AssertionError(f"engine still busy after {timeout_s} s: {engine_status(server)}")


def test_disconnect_mid_stream_aborts_the_request(server: Server) -> None:
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    headers = {"X-Request-ID": "leaves-mid-stream"}
    with (
        httpx.Client(base_url=server.url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        assert next(line for line in r.iter_lines() if line).startswith("data: ")
    # Closing the connection must abort it in the engine long before 2000 tokens are done.
    assert wait_idle(server) < 10
    gone = [json.loads(line) for line in server.log().splitlines() if '"request.client_gone"' in line]
    mine = [event for event in gone if event.get("request_id") == "leaves-mid-stream"]
    assert mine and mine[0]["completion_tokens"] < 2000, gone


def test_disconnect_while_waiting_for_a_whole_completion_aborts_it(server: Server) -> None:
    # 32 x 2000 tokens: seconds of work for the tiny model, which made 2000 alone in under 1.5 s once and
    # 8 x 2000 in under 1.5 s on a good moment (about 10,000 tokens/s in one batch).
    body = {"model": MODEL, "prompt": "b", "max_tokens": 2000, "n": 32, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=1.5))
    assert wait_idle(server) < 10
