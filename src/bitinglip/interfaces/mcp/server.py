"""The MCP server itself: `tools/list` and `tools/call` on the SDK's low-level `Server`.

The low-level server rather than `MCPServer`: the tools' schemas come from msgspec Structs (arguments.py), as the
rest of the project's wire types do, and `MCPServer` sets up the standard library's logging when built, over
ours. A call's arguments are checked against its Struct; a bad argument, a refusal or an API error is the tool's
error result (`isError`, the message naming what is wrong), never a protocol error or a crash.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import msgspec
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)

from bitinglip.core import get_logger
from bitinglip.interfaces.mcp.api import LocalApi, ToolFailure
from bitinglip.interfaces.mcp.arguments import input_schema
from bitinglip.interfaces.mcp.tools import TOOLS, ToolSpec

log = get_logger(__name__)

INSTRUCTIONS = (
    "BitingLip serves open LLMs behind an OpenAI-compatible API. list_models names the models you can chat "
    "with; chat asks one; submit_batch and batch_status run many prompts in the background; usage counts the "
    "tokens. With an admin key, list_deployments, deploy, undeploy, pull_model and pull_status manage what is "
    "served."
)


class McpServer:
    """The tools, served with the caller's key through the in-process API (set when the app starts)."""

    def __init__(self) -> None:
        self.api: LocalApi | None = None
        self.specs = {spec.name: spec for spec in TOOLS}
        self.tools = [
            Tool(
                name=spec.name,
                title=spec.annotations.title,
                description=spec.description,
                input_schema=input_schema(spec.args),
                annotations=spec.annotations,
            )
            for spec in TOOLS
        ]
        self.lowlevel: Server[Any] = Server(
            "bitinglip",
            version=importlib.metadata.version("bitinglip"),
            title="BitingLip",
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(tools=self.tools)

    async def call_tool(self, ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
        spec = self.specs.get(params.name)
        if spec is None:
            raise MCPError(code=INVALID_PARAMS, message=f"no tool named {params.name!r}; tools/list names them")
        # The HTTP request that carried this call: its key, and the state the key check left in its scope.
        request = ctx.request
        headers = request.headers if request is not None else {}
        state: dict[str, Any] = request.scope.get("state", {}) if request is not None else {}
        state.setdefault("log", {})["mcp_tool"] = spec.name  # the /mcp access line names the tool
        key = state.get("key")
        admin = key is None or key.scope == "admin"  # no key: auth is off
        try:
            if self.api is None:
                raise ToolFailure("the server is starting or stopping; try again")
            caller = self.api.as_caller(headers, state.get("request_id"), admin=admin)
            reply = await spec.run(caller, _arguments(spec, params.arguments))
        except ToolFailure as failure:
            state["log"]["mcp_error"] = True
            return CallToolResult(content=[TextContent(text=f"{spec.name}: {failure}")], is_error=True)
        except Exception as exc:
            state["log"]["mcp_error"] = True
            log.exception("mcp.tool_crashed", tool=spec.name, error=f"{type(exc).__name__}: {exc}")
            text = f"{spec.name}: internal error; the request id {state.get('request_id', '')} finds it in the logs"
            return CallToolResult(content=[TextContent(text=text)], is_error=True)
        return CallToolResult(content=[TextContent(text=reply.as_text())], structured_content=reply.data)


def _arguments(spec: ToolSpec, arguments: dict[str, Any] | None) -> Any:
    try:
        return msgspec.convert(arguments or {}, spec.args)
    except msgspec.ValidationError as exc:
        # msgspec says `Expected `int`, got `str` - at `$.max_tokens``: the argument by name, as the schema has it.
        raise ToolFailure(f"invalid arguments: {str(exc).replace('$.', '')}") from None
