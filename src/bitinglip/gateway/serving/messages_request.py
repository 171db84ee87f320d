"""`/v1/messages` requests as chat: the system prompt merged, content blocks turned into chat messages and tool
turns, tools and `tool_choice` mapped, each a `ChatCompletionRequest` that `ChatServing.prepare_chat` takes; and
chat's errors renamed to the fields the request has (`rename`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from bitinglip.core import InvalidInput, get_logger
from bitinglip.gateway.protocol.chat import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCallIn,
    FunctionDefinition,
    MessageToolCall,
    NamedFunction,
    NamedToolChoice,
    Tool,
)
from bitinglip.gateway.protocol.messages import (
    ContentBlock,
    MessagesInput,
    MessagesRequest,
)
from bitinglip.gateway.protocol.sampling import check_range

log = get_logger(__name__)

# Parts of the system prompt (the `system` field's blocks, `role: "system"` messages) are separate texts; the
# text blocks of one message are one text, joined as chat templates join a message's text parts.
SYSTEM_JOIN = "\n\n"
BLOCK_JOIN = "\n"
DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # an earlier turn's reasoning: not for this model


@dataclass(slots=True)
class Translated:
    """A Messages request as a chat request, and where each chat message and tool came from (for error messages)."""

    chat: ChatCompletionRequest
    message_origins: list[int | None] = field(default_factory=list)  # the request's message index; None: system
    tool_origins: list[int] = field(default_factory=list)  # the request's tool index


def _text_of(content: str | list[ContentBlock] | None, param: str, join: str) -> str:
    """Text content (a string, or text blocks) as one text; any other block is refused by name."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(content):
        if block.type != "text" or block.text is None:
            raise InvalidInput(
                f"`{param}.{j}` is a {block.type!r} block; only text blocks are taken here", param=f"{param}.{j}.type"
            )
        texts.append(block.text)
    return join.join(texts)


def _refusal(kind: str, role: str) -> str:
    if kind == "tool_use":
        return "a tool_use block belongs in an assistant turn (the model's calls), not a user turn"
    if kind == "tool_result":
        return "a tool_result block belongs in a user turn (answering the model's calls), not an assistant turn"
    return (
        f"{kind!r} blocks cannot be taken: this server's models read text (text, tool_use and tool_result blocks; "
        "thinking blocks from earlier turns are dropped)"
    )


def _turn(role: str, content: str | list[ContentBlock], where: str) -> list[ChatMessage]:
    """One user or assistant message as chat messages: a user turn's tool results each a `tool` message first
    (Anthropic puts them first in the turn), then its text; an assistant turn's text and calls as one message."""
    blocks = [ContentBlock(type="text", text=content)] if isinstance(content, str) else content
    texts: list[str] = []
    calls: list[MessageToolCall] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        if block.type == "text" and block.text is not None:
            texts.append(block.text)
        elif block.type == "tool_use" and role == "assistant":
            calls.append(_history_call(block, at))
        elif block.type == "tool_result" and role == "user":
            if not block.tool_use_id:
                raise InvalidInput(f"`{at}.tool_use_id` is required", param=f"{at}.tool_use_id")
            text = _text_of(block.content, f"{at}.content", BLOCK_JOIN)
            results.append(ChatMessage(role="tool", content=text, tool_call_id=block.tool_use_id))
        elif block.type in DROPPED_BLOCKS:
            continue
        elif block.type == "text":
            raise InvalidInput(f"`{at}.text` is required", param=f"{at}.text")
        else:
            raise InvalidInput(f"`{at}`: {_refusal(block.type, role)}", param=f"{at}.type")
    if texts or calls or not results:
        joined = BLOCK_JOIN.join(texts) if texts or not calls else None
        results.append(ChatMessage(role=role, content=joined, tool_calls=calls or None))
    return results


def _history_call(block: ContentBlock, at: str) -> MessageToolCall:
    if not block.id or not block.name:
        raise InvalidInput(f"`{at}` (tool_use) needs its `id` and `name`", param=f"{at}.id" if not block.id else at)
    given = {} if block.input is None else block.input
    if not isinstance(given, dict):
        raise InvalidInput(f"`{at}.input` must be an object", param=f"{at}.input")
    return MessageToolCall(id=block.id, function=FunctionCallIn(name=block.name, arguments=json.dumps(given)))


def _tools(req: MessagesInput) -> tuple[list[Tool] | None, list[int]]:
    """Custom tools as chat's function tools; Anthropic's server tools (run by Anthropic, not by the client) are
    left out of what the model sees, and said so."""
    tools: list[Tool] = []
    origins: list[int] = []
    left_out: list[str] = []
    for k, tool in enumerate(req.tools or []):
        if tool.type not in (None, "custom"):
            left_out.append(f"{tool.name} ({tool.type})")
            continue
        if tool.input_schema is None:
            raise InvalidInput(f"`tools.{k}.input_schema` is required", param=f"tools.{k}.input_schema")
        function = FunctionDefinition(name=tool.name, description=tool.description, parameters=tool.input_schema)
        tools.append(Tool(type="function", function=function))
        origins.append(k)
    if left_out:
        log.info("messages.server_tools_left_out", tools=left_out)
    return tools or None, origins


def translate(req: MessagesInput) -> Translated:
    """``req`` as the chat request that renders the same prompt; its sampling fields too for a create request."""
    system = [] if req.system is None else [_text_of(req.system, "system", SYSTEM_JOIN)]
    turns: list[ChatMessage] = []
    origins: list[int | None] = []
    for i, message in enumerate(req.messages):
        where = f"messages.{i}"
        if message.role == "system":  # Claude Code sends one mid-conversation: it joins the system prompt
            system.append(_text_of(message.content, f"{where}.content", SYSTEM_JOIN))
            continue
        if message.role not in ("user", "assistant"):
            raise InvalidInput(
                f"`{where}.role` must be 'user', 'assistant' or 'system', got {message.role!r}", param=f"{where}.role"
            )
        made = _turn(message.role, message.content, where)
        turns.extend(made)
        origins.extend([i] * len(made))
    if system:
        turns.insert(0, ChatMessage(role="system", content=SYSTEM_JOIN.join(system)))
        origins.insert(0, None)
    tools, tool_origins = _tools(req)
    chat = ChatCompletionRequest(model=req.model, messages=turns, tools=tools, keep_alive=req.keep_alive)
    if req.thinking is not None:
        chat.chat_template_kwargs = {"enable_thinking": req.thinking.type != "disabled"}
    if (choice := req.tool_choice) is not None:
        if choice.type == "tool":
            if not choice.name:
                raise InvalidInput("`tool_choice.name` is required with type 'tool'", param="tool_choice.name")
            chat.tool_choice = NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
        elif choice.type == "any":
            chat.tool_choice = "required"
        elif choice.type == "none":
            chat.tool_choice = "none"
        elif tools is not None:
            chat.tool_choice = "auto"
        if choice.disable_parallel_tool_use:
            chat.parallel_tool_calls = False
    if isinstance(req, MessagesRequest):
        check_range("temperature", req.temperature, 0.0, 1.0)  # Anthropic's range, not OpenAI's 0-2
        chat.max_tokens = req.max_tokens
        chat.stream = req.stream
        chat.stop = req.stop_sequences or None
        chat.temperature = req.temperature
        chat.top_p = req.top_p
        chat.top_k = req.top_k
    return Translated(chat, origins, tool_origins)


_TOOL_PARAM = re.compile(r"tools([.\[])(\d+)(\]?)\.function\.(parameters|name)")
_MESSAGE_PARAM = re.compile(r"messages([.\[])(\d+)(\]?)")


def rename(exc: InvalidInput, done: Translated) -> None:
    """An error about the chat request, put in the Messages request's names (`tools.2.input_schema`, not
    `tools.1.function.parameters` of the tools left after the server tools)."""

    def tool(match: re.Match[str]) -> str:
        index = int(match[2])
        if index >= len(done.tool_origins):
            return match[0]
        name = "input_schema" if match[4] == "parameters" else "name"
        return f"tools{match[1]}{done.tool_origins[index]}{match[3]}.{name}"

    def message(match: re.Match[str]) -> str:
        index = int(match[2])
        if index >= len(done.message_origins):
            return match[0]
        origin = done.message_origins[index]
        return "system" if origin is None else f"messages{match[1]}{origin}{match[3]}"

    def renamed(text: str) -> str:
        return (
            _MESSAGE_PARAM.sub(message, _TOOL_PARAM.sub(tool, text))
            .replace("`stop` sequences", "`stop_sequences`")
            .replace("`stop`", "`stop_sequences`")
        )

    exc.message = renamed(exc.message)
    exc.args = (exc.message,)
    if exc.param is not None:
        exc.param = "stop_sequences" if exc.param == "stop" else renamed(exc.param)
