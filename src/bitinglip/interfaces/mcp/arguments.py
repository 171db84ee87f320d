"""The MCP tools' arguments: one msgspec Struct a tool, which gives the input schema `tools/list` shows
(`input_schema`) and checks the arguments of `tools/call` (unknown or ill-typed ones are refused by name)."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

WAIT_LIMIT_S = 300.0  # `wait: true` returns the state it reached by then, with a note
CHAT: Final = "/v1/chat/completions"


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class NoArgs(Args):
    pass


class Message(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant"]
    content: str


MaxTokens = Annotated[int, msgspec.Meta(ge=1, description="The most tokens to generate (default: the server's)")]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2, description="Sampling temperature, 0 to 2 (default 1)")]


class DeployArgs(Args):
    model: Annotated[str, _doc("A registered model's name, a local model directory, or a hub id (org/name)")]
    name: Annotated[str, _doc("What requests will send as `model` (default: the model's registry name)")] | None = None
    replicas: Annotated[int, msgspec.Meta(ge=1, description="Engines serving this name (default 1)")] | None = None
    keep_alive: (
        Annotated[float | str, _doc('Idle time before it is put away: seconds, or "30s", "5m", "1h"; -1 never')] | None
    ) = None
    wait: Annotated[bool, _doc(f"Wait until it is ready or failed (at most {WAIT_LIMIT_S:.0f} s)")] = False


class NameArgs(Args):
    name: Annotated[str, _doc("The deployment's name, as list_deployments shows it")]


class PullArgs(Args):
    model: Annotated[str, _doc("A hub repository: org/name, or org/name@revision")]
    wait: Annotated[bool, _doc(f"Wait until the pull ends (at most {WAIT_LIMIT_S:.0f} s)")] = False


class PullStatusArgs(Args):
    pull_id: Annotated[str, _doc("The id pull_model answered")]


class ChatArgs(Args):
    model: Annotated[str, _doc("A model name, as list_models shows it")]
    prompt: Annotated[str, _doc("The user's message (or give `messages`)")] | None = None
    messages: Annotated[list[Message], _doc("The whole conversation, oldest first (or give `prompt`)")] | None = None
    system: Annotated[str, _doc("A system message put first")] | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    seed: Annotated[int, _doc("Sampling seed: the same seed and request give the same answer")] | None = None


class BatchArgs(Args):
    model: Annotated[str, _doc("The model every line runs on (a request body may name its own)")]
    prompts: Annotated[list[str], _doc("One user message per line (or give `requests`)")] | None = None
    requests: (
        Annotated[
            list[dict[str, Any]],
            _doc("Request bodies of `endpoint`, one per line, as the OpenAI API takes them (or give `prompts`)"),
        ]
        | None
    ) = None
    endpoint: Annotated[Literal["/v1/chat/completions", "/v1/completions"], _doc("The API each line calls")] = CHAT
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None


class BatchStatusArgs(Args):
    batch_id: Annotated[str, _doc("The id submit_batch answered")]


class UsageArgs(Args):
    key_id: Annotated[str, _doc("Only this key (admin keys; any other key sees its own usage only)")] | None = None
    model: Annotated[str, _doc("Only this model")] | None = None
    start: Annotated[str, _doc("First UTC day, as 2026-11-24")] | None = None
    end: Annotated[str, _doc("Last UTC day, as 2026-11-24")] | None = None


def input_schema(args: type[Args]) -> dict[str, Any]:
    """The arguments' JSON schema, self-contained: the object itself at the root, what it refers to in `$defs`."""
    _, components = msgspec.json.schema_components([args], ref_template="#/$defs/{name}")
    root = dict(components.pop(args.__name__))
    root.pop("title", None)
    root.pop("description", None)  # the tool's own description says it
    root["properties"] = {name: _optional(prop) for name, prop in root["properties"].items()}
    if components:
        root["$defs"] = components
    return root


def _optional(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional argument as its own type: `{"type": "string", "description": ...}` rather than msgspec's
    `anyOf` with null (null is still taken, as not given); what is not required is optional already."""
    branches = prop.get("anyOf")
    if prop.get("default", 0) is None and branches and len(branches) == 2 and {"type": "null"} in branches:
        return next(b for b in branches if b != {"type": "null"})
    return prop
