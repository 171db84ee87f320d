"""OpenAI's tool fields checked before the engine sees them, and the history's calls made ready for a chat template.

Reading calls out of the model's text is the engine's part (vLLM's tool parsers, `cluster/vllm/tools.py`); here
is only what a bad request must be told: a tool that is not a JSON schema, two tools of one name, a named choice
that is not among the tools, tools mixed with another output constraint.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from bitinglip.core import InvalidInput
from bitinglip.gateway.protocol.chat import ChatCompletionRequest, ChatMessage, NamedToolChoice, Tool

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_TOOLS = 128  # OpenAI's limit
# The tools are rendered into the prompt and compiled into a constraint on the server's CPU: bounded by size.
MAX_TOOLS_BYTES = 256 * 1024


class ToolRequest(msgspec.Struct, kw_only=True):
    """A chat request's tools, checked, as the chat template and vLLM's parsers take them."""

    tools: list[dict[str, Any]]
    choice: str | dict[str, Any]  # "none", "auto", "required", or {"type": "function", "function": {"name"}}
    parallel: bool


def check_tools(req: ChatCompletionRequest) -> ToolRequest | None:
    """The request's tools, checked; None when it sends none."""
    if not req.tools:
        if req.tools is not None:
            raise InvalidInput("`tools` must not be empty; leave it out for no tools", param="tools")
        if req.tool_choice not in (None, "none"):
            raise InvalidInput("`tool_choice` needs `tools`", param="tool_choice")
        return None
    if len(req.tools) > MAX_TOOLS:
        raise InvalidInput(f"`tools` takes at most {MAX_TOOLS} tools", param="tools")
    plain = tools_json(req.tools)  # by size first: checking a schema takes time that grows with it
    names: set[str] = set()
    for i, tool in enumerate(req.tools):
        function = tool.function
        if not TOOL_NAME.match(function.name):
            raise InvalidInput(
                f"tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-', got {function.name!r}",
                param=f"tools.{i}.function.name",
            )
        if function.name in names:
            raise InvalidInput(f"two tools are named {function.name!r}", param=f"tools.{i}.function.name")
        names.add(function.name)
        if function.parameters is not None:
            _check_schema(function.parameters, f"tools.{i}.function.parameters")
    choice: str | dict[str, Any] = "auto"
    if isinstance(req.tool_choice, NamedToolChoice):
        if req.tool_choice.function.name not in names:
            raise InvalidInput(
                f"`tool_choice` names {req.tool_choice.function.name!r}, which is not among `tools` "
                f"({', '.join(sorted(names))})",
                param="tool_choice",
            )
        choice = msgspec.to_builtins(req.tool_choice)
    elif req.tool_choice is not None:
        choice = req.tool_choice
    if choice != "none" and (
        req.structured_outputs is not None or (req.response_format is not None and req.response_format.type != "text")
    ):
        param = "response_format" if req.response_format is not None else "structured_outputs"
        raise InvalidInput(
            f"`{param}` cannot be combined with `tools` here (tool calls are constrained to the tools' schemas); "
            'send one of them, or `tool_choice: "none"`',
            param=param,
        )
    return ToolRequest(tools=plain, choice=choice, parallel=req.parallel_tool_calls is not False)


def tools_json(tools: list[Tool]) -> list[dict[str, Any]]:
    """The tools as the chat template takes them; refused when too large to render and compile."""
    plain = [msgspec.to_builtins(tool) for tool in tools]
    if (size := len(msgspec.json.encode(plain))) > MAX_TOOLS_BYTES:
        raise InvalidInput(
            f"`tools` are {size:,} bytes of JSON; at most {MAX_TOOLS_BYTES:,} are taken",
            param="tools",
            code="tools_too_large",
        )
    return plain


def _check_schema(schema: dict[str, Any], param: str) -> None:
    from jsonschema import SchemaError, validators  # type: ignore[import-untyped]

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        raise InvalidInput(
            f"`{param}` is not a valid JSON schema: {exc.message}" + (f" (at {where})" if where else ""), param=param
        ) from exc
    if schema.get("type", "object") != "object":
        raise InvalidInput(f"`{param}` must describe an object (type: object), got {schema['type']!r}", param=param)


def history_calls(message: ChatMessage, index: int) -> list[dict[str, Any]]:
    """An assistant turn's calls for the chat template, with their arguments as objects (as templates expect)."""
    if message.role != "assistant":
        raise InvalidInput(
            f"messages[{index}] has tool_calls but its role is {message.role!r}", param=f"messages.{index}"
        )
    calls = []
    for j, call in enumerate(message.tool_calls or []):
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError as exc:
            raise InvalidInput(
                f"messages[{index}].tool_calls[{j}].function.arguments is not JSON: {exc}",
                param=f"messages.{index}.tool_calls.{j}.function.arguments",
            ) from exc
        calls.append(
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}
        )
    return calls
