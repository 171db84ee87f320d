"""The MCP server at `/mcp` over the scripted engine, spoken to as a client does (JSON-RPC over POST): the tools and
their schemas, calls that go through the HTTP API with the caller's key, errors as tool results, and the
endpoint's HTTP edges (keys, methods, hosts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_support import Gateway, build_gateway
from litestar.testing import TestClient

from bitinglip.gateway import KeyCreate
from bitinglip.interfaces import DashboardPlugin
from doubles import ScriptedEngine

TOOLS = {
    "list_models",
    "list_deployments",
    "deploy",
    "undeploy",
    "pull_model",
    "pull_status",
    "chat",
    "submit_batch",
    "batch_status",
    "usage",
}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
LOCAL = "http://127.0.0.1:8000"


def rpc(
    client: TestClient[Any], method: str, params: dict[str, Any], key: str | None = None, request_id: str | None = None
) -> Any:
    headers = MCP_HEADERS | ({"Authorization": f"Bearer {key}"} if key else {})
    if request_id is not None:
        headers["x-request-id"] = request_id
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == 7
    return body


def call(client: TestClient[Any], tool: str, key: str | None = None, /, **arguments: Any) -> dict[str, Any]:
    result: dict[str, Any] = rpc(client, "tools/call", {"name": tool, "arguments": arguments}, key)["result"]
    return result


def text(result: dict[str, Any]) -> str:
    [block] = result["content"]
    assert block["type"] == "text"
    value: str = block["text"]
    return value


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[TestClient[Any]]:
    with TestClient(build_gateway(ScriptedEngine(), tmp_path).app, base_url=LOCAL) as c:
        yield c


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[TestClient[Any], Gateway]]:
    gateway = build_gateway(ScriptedEngine(), tmp_path, auth=True)
    with TestClient(gateway.app, base_url=LOCAL) as c:
        yield c, gateway


def make_key(client: TestClient[Any], gateway: Gateway, **spec: Any) -> str:
    return client.blocking_portal.call(gateway.keys.create, KeyCreate(**{"name": "k"} | spec)).key


def test_every_tool_is_listed_with_an_object_schema(keyless: TestClient[Any]) -> None:
    tools = {t["name"]: t for t in rpc(keyless, "tools/list", {})["result"]["tools"]}
    assert tools.keys() == TOOLS
    for tool in tools.values():
        schema = tool["inputSchema"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False, tool["name"]
        assert len(tool["description"]) > 60 and tool["annotations"]["title"]
        for name, prop in schema["properties"].items():
            assert "anyOf" not in prop or name == "keep_alive", (tool["name"], name)  # optional is not nullable
    chat = tools["chat"]["inputSchema"]
    assert chat["required"] == ["model"] and chat["properties"]["max_tokens"]["minimum"] == 1
    assert chat["properties"]["messages"]["items"] == {"$ref": "#/$defs/Message"} and "Message" in chat["$defs"]
    assert tools["undeploy"]["annotations"]["destructiveHint"] is True
    assert tools["list_deployments"]["annotations"]["readOnlyHint"] is True


def test_chat_answers_the_text_and_the_usage(keyless: TestClient[Any]) -> None:
    result = rpc(
        keyless,
        "tools/call",
        {"name": "chat", "arguments": {"model": "fake", "prompt": "hi", "max_tokens": 2, "system": "Be brief."}},
        request_id="trace-me",
    )["result"]
    assert result["isError"] is False
    assert text(result) == "Hello there"
    data = result["structuredContent"]
    assert data["finish_reason"] == "length" and data["usage"]["completion_tokens"] == 2
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + 2
    # One request id finds the MCP call and the API call it made, each with its own access line.
    dashboard = keyless.app.plugins.get(DashboardPlugin)
    lines = [(line.path, line.completion_tokens) for line in dashboard.request_log.feed.since(0)]
    traced = [
        (line.path, line.completion_tokens)
        for line in dashboard.request_log.feed.since(0)
        if line.request_id == "trace-me"
    ]
    assert traced == [("/v1/chat/completions", 2), ("/mcp", None)], lines
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    again = call(keyless, "chat", model="fake", messages=[*conversation, {"role": "user", "content": "more"}])
    assert again["isError"] is False and text(again).startswith("Hello")


def test_bad_arguments_and_api_errors_are_tool_errors_naming_the_cause(keyless: TestClient[Any]) -> None:
    wrong_type = call(keyless, "chat", model="fake", prompt="hi", max_tokens="many")
    assert wrong_type["isError"] is True and "`max_tokens`" in text(wrong_type)
    too_small = call(keyless, "chat", model="fake", prompt="hi", max_tokens=0)
    assert too_small["isError"] is True and ">= 1" in text(too_small)
    unknown_argument = call(keyless, "list_deployments", verbose=True)
    assert unknown_argument["isError"] is True and "verbose" in text(unknown_argument)
    nothing_asked = call(keyless, "chat", model="fake")
    assert nothing_asked["isError"] is True and "`prompt`" in text(nothing_asked)
    not_served = call(keyless, "chat", model="nope", prompt="hi")
    assert not_served["isError"] is True and "(404 model_not_found)" in text(not_served)
    refused = call(keyless, "deploy", model="no-such-model")
    assert refused["isError"] is True and "no-such-model" in text(refused) and "(404" in text(refused)
    assert "(404" in text(call(keyless, "undeploy", name="nothing-here"))
    assert "(404" in text(call(keyless, "batch_status", batch_id="batch_nope"))
    both = call(keyless, "submit_batch", model="fake", prompts=["a"], requests=[{"prompt": "b"}])
    assert both["isError"] is True and "either" in text(both)
    no_tool = rpc(keyless, "tools/call", {"name": "rm_rf", "arguments": {}})
    assert "rm_rf" in no_tool["error"]["message"]


def test_the_2026_protocol_needs_no_handshake(keyless: TestClient[Any]) -> None:
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
    }
    params = {"name": "chat", "arguments": {"model": "fake", "prompt": "hi", "max_tokens": 1}, "_meta": envelope}
    headers = MCP_HEADERS | {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "chat"}
    r = keyless.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert text(r.json()["result"]) == "Hello"


def test_a_keyless_local_server_wants_local_hosts_and_takes_only_post(keyless: TestClient[Any]) -> None:
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    rebound = keyless.post("/mcp", json=listing, headers=MCP_HEADERS | {"host": "attacker.example:8000"})
    assert rebound.status_code == 421
    foreign = keyless.post("/mcp", json=listing, headers=MCP_HEADERS | {"origin": "http://attacker.example"})
    assert foreign.status_code == 403
    for method in ("GET", "DELETE"):
        r = keyless.request(method, "/mcp", headers=MCP_HEADERS)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_keys_and_scopes_are_the_apis(guarded: tuple[TestClient[Any], Gateway]) -> None:
    client, gateway = guarded
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    missing = client.post("/mcp", json=listing, headers=MCP_HEADERS)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    wrong = client.post("/mcp", json=listing, headers=MCP_HEADERS | {"Authorization": "Bearer bl_nope"})
    assert wrong.status_code == 401
    user = make_key(client, gateway)
    assert len(rpc(client, "tools/list", {}, user)["result"]["tools"]) == len(TOOLS)
    # With auth on, the key is the guard: any host will do (a proxy in front, a name on the network).
    headers = MCP_HEADERS | {"Authorization": f"Bearer {user}", "host": "models.example.org"}
    assert client.post("/mcp", json=listing, headers=headers).status_code == 200
    assert text(call(client, "chat", user, model="fake", prompt="hi", max_tokens=1)) == "Hello"
    served = call(client, "list_models", user)["structuredContent"]
    assert [m["id"] for m in served["served"]] == ["fake"] and "registry" not in served  # not an admin key
    for name, arguments in (
        ("deploy", {"model": "fake"}),
        ("undeploy", {"name": "fake"}),
        ("list_deployments", {}),
        ("pull_model", {"model": "org/x"}),
        ("pull_status", {"pull_id": "p"}),
    ):
        denied = call(client, name, user, **arguments)
        assert denied["isError"] is True, name
        assert "needs an `admin` key (403 scope_required)" in text(denied), (name, text(denied))
    admin = make_key(client, gateway, name="root", scope="admin")
    assert call(client, "list_models", admin)["structuredContent"]["registry"] == []
    assert call(client, "list_deployments", admin)["structuredContent"] == {"deployments": []}
    mine = call(client, "usage", user)["structuredContent"]
    [row] = mine["rows"]  # the one chat, charged to the key that asked through the tool; nothing for /mcp itself
    assert (row["key_id"], row["model"], row["requests"], row["completion_tokens"]) == (
        user.split("_")[1],
        "fake",
        1,
        1,
    )
    assert mine["total"]["requests"] == 1
    assert call(client, "usage", admin, model="fake")["structuredContent"]["rows"] == [row]
    limited = make_key(client, gateway, name="other-models", models=["other"])
    barred = call(client, "chat", limited, model="fake", prompt="hi")
    assert barred["isError"] is True and "model_not_allowed" in text(barred)
