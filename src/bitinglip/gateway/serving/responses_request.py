"""`/v1/responses` requests as chat: the input items (and the stored turns a request continues), the tools and
their namespaces, the output format, each turned into a chat request that `ChatServing.prepare_chat` takes,
with what maps the chat side's names back to the request's (`Translation`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

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
from bitinglip.gateway.protocol.responses import (
    FunctionCallItem,
    FunctionTool,
    InputContentPart,
    InputItem,
    MessageItem,
    NamespaceTool,
    ResponsesRequest,
    bad_value,
    input_item,
)
from bitinglip.gateway.protocol.sampling import JsonSchemaFormat, ResponseFormat
from bitinglip.gateway.response_store import Turn, Viewer

if TYPE_CHECKING:
    pass

log = get_logger(__name__)
T = TypeVar("T")

NAMESPACE_SEPARATOR = "__"
MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
TOOL_CHOICES = frozenset({"auto", "none", "required"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class ResponsesCall:
    """A request with what its call says about the caller (`Viewer`): whose stored responses it may continue,
    and whose its own becomes. What the pipeline reads of it (`model`, `keep_alive`) is the request's."""

    request: ResponsesRequest
    viewer: Viewer

    @property
    def model(self) -> str | None:
        return self.request.model

    @property
    def keep_alive(self) -> float | str | None:
        return self.request.keep_alive


@dataclass(slots=True)
class Translation:
    """A Responses request as chat: the chat request, and what maps the chat side's names back to the request's."""

    chat: ChatCompletionRequest
    items: list[dict[str, Any]]  # the request's own input items, each with an id, as they are stored and listed
    # The model-facing name of each function -> (its namespace or None, its own name).
    names: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    tool_paths: list[str] = field(default_factory=list)  # per chat tool: where the request has it ("tools.2.tools.0")
    message_paths: list[str] = field(default_factory=list)  # per chat message: where it came from ("input.3")
    dropped: list[str] = field(default_factory=list)  # the tool types left out (hosted tools)

    def param(self, param: str | None) -> str | None:
        """A chat request's parameter named as the Responses request has it."""
        if param is None:
            return None
        head, _, rest = param.partition(".")
        if head == "messages":
            index, _, _ = rest.partition(".")
            if index.isdigit() and int(index) < len(self.message_paths):
                return self.message_paths[int(index)]
            return "input"
        if head == "tools":
            index, _, tail = rest.partition(".")
            if index.isdigit() and int(index) < len(self.tool_paths):
                path = self.tool_paths[int(index)]
                tail = tail.removeprefix("function.")
                return f"{path}.{tail}" if tail and tail != "function" else path
            return "tools"
        if head in ("max_tokens", "max_completion_tokens"):
            return "max_output_tokens"
        if head == "response_format":
            return "text.format.schema" if rest.endswith("schema") else "text.format"
        return param


def _text_of(content: str | list[InputContentPart], param: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if part.type in TEXT_PARTS and part.text is not None:
            texts.append(part.text)
        elif part.type == "refusal" and part.refusal is not None:
            texts.append(part.refusal)
        else:
            raise InvalidInput(
                f"`{param}.{i}` is a content part of type {part.type!r}; this server takes text parts only "
                "(input_text, output_text)",
                param=f"{param}.{i}.type",
            )
    return "".join(texts)


def _stored_item(item: InputItem, raw: dict[str, Any]) -> dict[str, Any]:
    """The item as it is stored and listed (`input_items`): OpenAI's item shapes, with an id."""
    out = dict(raw)
    if isinstance(item, MessageItem):
        out.setdefault("type", "message")
        out["id"] = item.id or new_id("msg")
        out.setdefault("status", "completed")
        if isinstance(item.content, str):
            kind = "output_text" if item.role == "assistant" else "input_text"
            part: dict[str, Any] = {"type": kind, "text": item.content}
            if kind == "output_text":
                part["annotations"] = []
            out["content"] = [part]
    elif isinstance(item, FunctionCallItem):
        out["id"] = item.id or new_id("fc")
        out.setdefault("status", "completed")
    else:
        out["id"] = item.id or new_id("fco")
        out.setdefault("status", "completed")
    return out


class _Messages:
    """Input items made chat messages: an assistant turn's text and the calls after it become one assistant
    message, a call's output a tool message; leading system and developer messages (and `instructions`) one
    system message, as chat templates expect the system prompt once and first."""

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self.paths: list[str] = []
        self.assistant: ChatMessage | None = None  # the assistant message the next calls join

    def system(self, text: str, path: str) -> None:
        if self.messages and all(m.role == "system" for m in self.messages):
            first = self.messages[0]
            first.content = f"{first.content}\n\n{text}" if first.content else text
            return
        self.messages.append(ChatMessage(role="system", content=text))
        self.paths.append(path)

    def add(self, item: InputItem, path: str) -> None:
        if isinstance(item, MessageItem):
            if item.role not in MESSAGE_ROLES:
                raise InvalidInput(
                    f"`{path}.role` must be one of {', '.join(sorted(MESSAGE_ROLES))}, got {item.role!r}",
                    param=f"{path}.role",
                )
            text = _text_of(item.content, f"{path}.content")
            if item.role in ("system", "developer"):
                self.assistant = None
                self.system(text, path)
                return
            message = ChatMessage(role=item.role, content=text)
            self.assistant = message if item.role == "assistant" else None
        elif isinstance(item, FunctionCallItem):
            name = item.name if item.namespace is None else f"{item.namespace}{NAMESPACE_SEPARATOR}{item.name}"
            call = MessageToolCall(id=item.call_id, function=FunctionCallIn(name=name, arguments=item.arguments))
            if self.assistant is not None:
                self.assistant.tool_calls = [*(self.assistant.tool_calls or []), call]
                return
            message = ChatMessage(role="assistant", content=None, tool_calls=[call])
            self.assistant = message
        else:
            self.assistant = None
            output = _text_of(item.output, f"{path}.output")
            message = ChatMessage(role="tool", content=output, tool_call_id=item.call_id)
        self.messages.append(message)
        self.paths.append(path)


def _tools(req: ResponsesRequest, tr: Translation) -> list[Tool] | None:
    if req.tools is None:
        return None
    tools: list[Tool] = []

    def add(function: FunctionTool, namespace: str | None, path: str) -> None:
        shown = function.name if namespace is None else f"{namespace}{NAMESPACE_SEPARATOR}{function.name}"
        definition = FunctionDefinition(
            name=shown, description=function.description, parameters=function.parameters, strict=function.strict
        )
        tools.append(Tool(type="function", function=definition))
        tr.names[shown] = (namespace, function.name)
        tr.tool_paths.append(path)

    for i, raw in enumerate(req.tools):
        kind = raw.get("type")
        if kind == "function":
            add(_convert(raw, FunctionTool, f"tools.{i}"), None, f"tools.{i}")
        elif kind == "namespace":
            group = _convert(raw, NamespaceTool, f"tools.{i}")
            for j, inner in enumerate(group.tools):
                if inner.get("type") == "function":
                    add(_convert(inner, FunctionTool, f"tools.{i}.tools.{j}"), group.name, f"tools.{i}.tools.{j}")
                else:
                    tr.dropped.append(f"{group.name}.{inner.get('type')}")
        else:
            tr.dropped.append(str(kind))
    return tools


def _convert(raw: Any, kind: type[T], param: str) -> T:
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise bad_value(exc, param) from exc


def _tool_choice(req: ResponsesRequest, tr: Translation, tools: list[Tool] | None) -> Any:
    choice = req.tool_choice
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise InvalidInput(
                f"`tool_choice` must be one of auto, none, required or a function, got {choice!r}", param="tool_choice"
            )
        if not tools and choice in ("auto", "none"):
            return None  # every tool sent was a hosted one, left out: nothing to choose from
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise InvalidInput(
            f"`tool_choice` of type {choice.get('type')!r} is not available here; send auto, none, required or "
            '{"type": "function", "name": ...} (hosted tools are not run by this server)',
            param="tool_choice",
        )
    name: str = choice["name"]
    namespace = choice.get("namespace")
    if isinstance(namespace, str):
        name = f"{namespace}{NAMESPACE_SEPARATOR}{name}"
    elif name not in tr.names:
        # A namespace's function named by its own name, when that is unambiguous.
        matches = [shown for shown, (ns, own) in tr.names.items() if ns is not None and own == name]
        name = matches[0] if len(matches) == 1 else name
    return NamedToolChoice(type="function", function=NamedFunction(name=name))


def _response_format(req: ResponsesRequest) -> ResponseFormat | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat(type="json_object")
    if fmt.schema is None:
        raise InvalidInput("`text.format` of type json_schema needs `schema`", param="text.format.schema")
    schema = JsonSchemaFormat(
        name=fmt.name or "response", description=fmt.description, schema=fmt.schema, strict=fmt.strict
    )
    return ResponseFormat(type="json_schema", json_schema=schema)


def translate(req: ResponsesRequest, history: list[Turn] | None = None) -> Translation:
    """The request as a chat request: `instructions` first (never an earlier turn's: OpenAI's rule), then every
    earlier turn's input and output, then this request's input."""
    tr = Translation(chat=ChatCompletionRequest(), items=[])
    tools = _tools(req, tr)
    messages = _Messages()
    if req.instructions:
        messages.system(req.instructions, "instructions")
    for turn in history or []:
        for raw in [*turn.input, *turn.output]:
            item = input_item(raw, "previous_response_id")
            if item is not None:
                messages.add(item, "previous_response_id")
    given: list[Any] = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input or []
    for i, raw in enumerate(given):
        path = f"input.{i}" if isinstance(req.input, list) else "input"
        item = input_item(raw, path)
        tr.items.append(_stored_item(item, raw) if item is not None else dict(raw))
        if item is not None:
            messages.add(item, path)
    tr.message_paths = messages.paths
    if tr.dropped:
        log.info("responses.tools_dropped", types=tr.dropped, reason="hosted tools are not run by this server")
    tr.chat = ChatCompletionRequest(
        model=req.model,
        messages=messages.messages,
        max_completion_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        seed=req.seed,
        stop=req.stop,
        repetition_penalty=req.repetition_penalty,
        ignore_eos=req.ignore_eos,
        stream=req.stream,
        user=req.user,
        keep_alive=req.keep_alive,
        tools=tools or None,
        tool_choice=_tool_choice(req, tr, tools),
        parallel_tool_calls=req.parallel_tool_calls,
        response_format=_response_format(req),
        chat_template_kwargs=_thinking(req),
    )
    return tr


def _thinking(req: ResponsesRequest) -> dict[str, Any] | None:
    """`reasoning.effort` for a model that reasons: "none" turns its thinking off (its chat template's
    `enable_thinking`), any other effort on; none given, it does as its template does by default."""
    effort = (req.reasoning or {}).get("effort")
    return None if effort is None else {"enable_thinking": effort != "none"}
