"""The MCP server at /mcp through the SDK's own client over real HTTP: the shared server (auth off, the real engine,
the hub stand-in), then a server of its own with auth on, where the keys and scopes are the API's."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from e2e.conftest import MODEL, Hub, Server, make_key, start_server, stop_server

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


@asynccontextmanager
async def mcp(server: Server, key: str | None = None) -> AsyncIterator[ClientSession]:
    """A session as Claude Desktop and Claude Code open one: the initialize handshake, the key in a header."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(300, read=300)) as http:
        async with streamable_http_client(f"{server.url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def text(result: CallToolResult) -> str:
    [block] = result.content
    assert isinstance(block, TextContent)
    return block.text


def data(result: CallToolResult) -> Any:
    assert not result.is_error, text(result)
    return result.structured_content


async def test_every_tool_is_listed_in_both_protocol_eras(server: Server) -> None:
    async with mcp(server) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert tools.keys() == TOOLS
    for tool in tools.values():
        assert tool.input_schema["type"] == "object" and tool.description, tool.name
    assert tools["chat"].input_schema["required"] == ["model"]
    # The SDK's own high-level client probes the 2026 protocol first (no handshake, one POST per call).
    async with Client(f"{server.url}/mcp") as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        listed = data(await client.call_tool("list_models", {}))
    assert MODEL in [m["id"] for m in listed["served"]]
    assert MODEL in [m["name"] for m in listed["registry"]]  # auth off: the admin view


async def test_chat_answers_from_the_real_engine(server: Server) -> None:
    async with mcp(server) as session:
        result = await session.call_tool("chat", {"model": MODEL, "prompt": "Hi", "max_tokens": 8, "seed": 11})
        deployments = data(await session.call_tool("list_deployments", {}))["deployments"]
    answer = data(result)
    assert text(result) == answer["content"] and answer["model"] == MODEL
    assert answer["finish_reason"] in ("stop", "length")
    assert 1 <= answer["usage"]["completion_tokens"] <= 8 and answer["usage"]["prompt_tokens"] > 0
    [served] = [d for d in deployments if d["name"] == MODEL]
    assert served["state"] == "ready" and served["reason"] is None and served["replicas"] == 1
    assert served["in_flight"] == 0 and served["memory_bytes"] > 0
    # One request id finds the MCP call and the API call it made, each with its own access line.
    deadline = time.monotonic() + 10
    while not (inner := _chat_lines_under_mcp(server)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert inner and inner[-1]["completion_tokens"] == answer["usage"]["completion_tokens"]


def _chat_lines_under_mcp(server: Server) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("event") == "http.request"]
    calls = {e["request_id"] for e in access if e.get("mcp_tool") == "chat" and e["path"] == "/mcp"}
    return [e for e in access if e["path"] == "/v1/chat/completions" and e["request_id"] in calls]


async def test_deploy_refusals_are_the_placements(server: Server) -> None:
    async with mcp(server) as session:
        unknown = await session.call_tool("deploy", {"model": "no-such-model"})
        too_big = await session.call_tool("deploy", {"model": MODEL, "name": "mcp-too-many", "replicas": 1000})
        gone = await session.call_tool("undeploy", {"name": "mcp-never-deployed"})
        deployments = data(await session.call_tool("list_deployments", {}))["deployments"]
    assert unknown.is_error and "no-such-model" in text(unknown) and "(404 model_not_found)" in text(unknown)
    assert too_big.is_error and "(409 insufficient_memory)" in text(too_big), text(too_big)
    assert "short by" in text(too_big)
    assert gone.is_error and "(404" in text(gone)
    assert "mcp-too-many" not in {d["name"] for d in deployments}


async def test_a_batch_runs_to_its_results(server: Server) -> None:
    prompts = ["Say one.", "Say two.", "Say three."]
    async with mcp(server) as session:
        submitted = data(await session.call_tool("submit_batch", {"model": MODEL, "prompts": prompts, "max_tokens": 4}))
        assert submitted["counts"]["total"] == 3 and submitted["status"] in ("validating", "in_progress")
        deadline = time.monotonic() + 180
        while True:
            status = data(await session.call_tool("batch_status", {"batch_id": submitted["batch_id"]}))
            if status["status"] in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert status["status"] == "completed", status
    assert status["counts"] == {"total": 3, "completed": 3, "failed": 0}
    results = status["results"]
    assert [r["custom_id"] for r in results] == ["0", "1", "2"]
    for r in results:
        assert isinstance(r["content"], str) and 1 <= r["usage"]["completion_tokens"] <= 4, r
    assert status["usage"]["output_tokens"] == sum(r["usage"]["completion_tokens"] for r in results)


async def test_a_pull_from_the_hub(server: Server, hub: Hub) -> None:
    """Of what is served already: the same commit, nothing downloaded again (a new model here would show in
    /v1/models, which other modules of the session count)."""
    gets_before = len(hub.stub.file_gets())
    async with mcp(server) as session:
        pulled = data(await session.call_tool("pull_model", {"model": MODEL, "wait": True}))
        again = data(await session.call_tool("pull_status", {"pull_id": pulled["id"]}))
        missing = await session.call_tool("pull_model", {"model": "org/not-on-the-hub"})
    assert pulled["state"] == "ready" and pulled["model"] == MODEL and pulled["path"].endswith(hub.sha)
    assert pulled["up_to_date"] is True and len(hub.stub.file_gets()) == gets_before
    assert again["id"] == pulled["id"] and again["state"] == "ready"
    assert missing.is_error and "org/not-on-the-hub" in text(missing) and "(404" in text(missing), text(missing)


# -- auth on


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    """Auth on, keys made by the CLI before it starts, nothing deployed (the admin key deploys through MCP)."""
    home = tmp_path_factory.mktemp("mcp-guarded")
    env = os.environ | {"BITINGLIP_HOME": str(home), "BITINGLIP_ENV": "test"}
    admin = make_key(env, "--name", "ops", "--scope", "admin")
    user = make_key(env, "--name", "agent")
    srv = start_server(home, "", BITINGLIP_GATEWAY__AUTH="true", BITINGLIP_GATEWAY__USAGE_FLUSH_S="0.5")
    yield srv, admin, user
    stop_server(srv)


async def test_keys_and_scopes_guard_the_tools(guarded: tuple[Server, str, str], tiny_model_dir: Path) -> None:
    server, admin, user = guarded
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
    refused = httpx.post(f"{server.url}/mcp", json=initialize, headers=headers, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"

    async with mcp(server, user) as session:
        assert {t.name for t in (await session.list_tools()).tools} == TOOLS
        denied = await session.call_tool("deploy", {"model": str(tiny_model_dir), "name": "tiny"})
        assert denied.is_error and "needs an `admin` key (403 scope_required)" in text(denied)
        assert "registry" not in data(await session.call_tool("list_models", {}))

    async with mcp(server, admin) as session:
        deployed = data(await session.call_tool("deploy", {"model": str(tiny_model_dir), "name": "tiny", "wait": True}))
    assert deployed["state"] == "ready" and deployed["name"] == "tiny", deployed

    async with mcp(server, user) as session:
        chat = data(await session.call_tool("chat", {"model": "tiny", "prompt": "Hi", "max_tokens": 5}))
        assert chat["usage"]["completion_tokens"] >= 1
        deadline = time.monotonic() + 20
        while True:  # written every 0.5 s
            mine = data(await session.call_tool("usage", {}))
            if mine["rows"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
    [row] = mine["rows"]  # its own key's only, however many keys there are
    assert (row["model"], row["requests"]) == ("tiny", 1)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        chat["usage"]["prompt_tokens"],
        chat["usage"]["completion_tokens"],
    )

    async with mcp(server, admin) as session:
        stopped = data(await session.call_tool("undeploy", {"name": "tiny"}))
    assert stopped["state"] in ("draining", "stopped")
