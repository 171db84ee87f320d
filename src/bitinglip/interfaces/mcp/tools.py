"""The MCP tools: each one a few calls to BitingLip's HTTP API (api.py) with the caller's key, its answer made
compact for an agent to read.

Each tool's arguments are a msgspec Struct (arguments.py). What a tool may do is what the caller's key may do
through the API: deploy, undeploy and pull need an admin key, and the API's own 403 (naming the scope) is the
tool's error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mcp_types import ToolAnnotations

from bitinglip.interfaces.mcp.api import Caller, ToolFailure
from bitinglip.interfaces.mcp.arguments import (
    CHAT,
    WAIT_LIMIT_S,
    Args,
    BatchArgs,
    BatchStatusArgs,
    ChatArgs,
    DeployArgs,
    NameArgs,
    NoArgs,
    PullArgs,
    PullStatusArgs,
    UsageArgs,
)

POLL_S = 1.0
MAX_RESULTS = 200  # batch result lines a batch_status answer carries; the output file has them all


@dataclass
class Reply:
    """A tool's answer: ``data`` is its structured content; ``text`` what the agent reads (default: data as JSON)."""

    data: dict[str, Any]
    text: str | None = None

    def as_text(self) -> str:
        return self.text if self.text is not None else json.dumps(self.data, separators=(",", ":"))


# -- the tools


async def list_models(api: Caller, _: NoArgs) -> Reply:
    served = await api.get("/v1/models")
    data: dict[str, Any] = {
        "served": [_some(card, "id", "status", "max_model_len", "parent") for card in served.get("data", [])]
    }
    if api.admin:
        registry = await api.get("/api/models")
        data["registry"] = [
            _some(m, "name", "state", "kind", "source", "size_bytes", "architecture", "context_length", "base_model")
            for m in registry.get("data", [])
        ]
    return Reply(data)


async def list_deployments(api: Caller, _: NoArgs) -> Reply:
    listed = await api.get("/api/deployments")
    return Reply({"deployments": [_deployment(d) for d in listed.get("data", [])]})


async def deploy(api: Caller, args: DeployArgs) -> Reply:
    body: dict[str, Any] = {"model": args.model}
    for field in ("name", "replicas", "keep_alive"):
        if (value := getattr(args, field)) is not None:
            body[field] = value
    status = await api.post("/api/deployments", body)
    if args.wait:
        status = await _until(api, _deployment_path(status["name"]), lambda d: d["state"] != "loading")
        if status["state"] == "failed":
            raise ToolFailure(f"deployment {status['name']} failed: {status.get('reason') or 'no reason given'}")
    compact = _deployment(status)
    if compact["state"] == "loading":
        compact["note"] = "loading: list_deployments shows when it is ready"
    return Reply(compact)


async def undeploy(api: Caller, args: NameArgs) -> Reply:
    status = await api.call("DELETE", _deployment_path(args.name))
    return Reply(_deployment(status))


async def pull_model(api: Caller, args: PullArgs) -> Reply:
    pull = await api.post("/api/models/pulls", {"model": args.model})
    if args.wait:
        pull = await _until(api, _pull_path(pull["id"]), lambda p: p["state"] in ("ready", "failed", "cancelled"))
        if pull["state"] == "failed":
            raise ToolFailure(f"pull {pull['id']} of {pull['model']} failed: {pull.get('error') or 'no reason given'}")
    return Reply(_pull(pull))


async def pull_status(api: Caller, args: PullStatusArgs) -> Reply:
    return Reply(_pull(await api.get(_pull_path(args.pull_id))))


async def chat(api: Caller, args: ChatArgs) -> Reply:
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    if args.messages is not None:
        messages.extend({"role": m.role, "content": m.content} for m in args.messages)
    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
    if not any(m["role"] != "system" for m in messages):
        raise ToolFailure("give `prompt` (one user message) or `messages` (the conversation)")
    body = {"model": args.model, "messages": messages, **_sampling(args.max_tokens, args.temperature)}
    if args.seed is not None:
        body["seed"] = args.seed
    reply = await api.post(CHAT, body)
    choice = reply["choices"][0]
    message = choice.get("message") or {}
    content = message.get("content") or ""
    data = {
        "model": reply.get("model"),
        "content": content,
        "finish_reason": choice.get("finish_reason"),
        "usage": _some(reply.get("usage") or {}, "prompt_tokens", "completion_tokens", "total_tokens"),
    }
    if message.get("reasoning_content"):
        data["reasoning"] = message["reasoning_content"]
    return Reply(data, text=content)


async def submit_batch(api: Caller, args: BatchArgs) -> Reply:
    if (args.prompts is None) == (args.requests is None):
        raise ToolFailure("give either `prompts` (one user message per line) or `requests` (one body per line)")
    sampling = _sampling(args.max_tokens, args.temperature)
    bodies: list[dict[str, Any]] = []
    for prompt in args.prompts or []:
        asked = {"messages": [{"role": "user", "content": prompt}]} if args.endpoint == CHAT else {"prompt": prompt}
        bodies.append({"model": args.model, **asked, **sampling})
    bodies.extend({"model": args.model, **sampling, **body} for body in args.requests or [])
    if not bodies:
        raise ToolFailure("the batch has no lines: give at least one prompt or request")
    lines = [
        json.dumps({"custom_id": str(i), "method": "POST", "url": args.endpoint, "body": body})
        for i, body in enumerate(bodies)
    ]
    content = ("\n".join(lines) + "\n").encode()
    file = await api.call(
        "POST",
        "/v1/files",
        files={"file": ("mcp-batch.jsonl", content, "application/jsonl")},
        data={"purpose": "batch"},
    )
    batch = await api.post(
        "/v1/batches", {"input_file_id": file["id"], "endpoint": args.endpoint, "completion_window": "24h"}
    )
    data = _batch(batch)
    data["note"] = "custom_id i is line i (from 0); batch_status shows progress, and the results when it ends"
    return Reply(data)


async def batch_status(api: Caller, args: BatchStatusArgs) -> Reply:
    batch = await api.get(f"/v1/batches/{quote(args.batch_id, safe='')}")
    data = _batch(batch)
    results: list[dict[str, Any]] = []
    for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
        if file_id:
            content = await api.send("GET", f"/v1/files/{quote(file_id, safe='')}/content")
            results.extend(_result(json.loads(line)) for line in content.text.splitlines() if line.strip())
    if results:
        results.sort(key=_line_order)  # the output file's lines, then the error file's: back in input order
        data["results"] = results[:MAX_RESULTS]
        if len(results) > MAX_RESULTS:
            data["results_left_out"] = len(results) - MAX_RESULTS
    return Reply(data)


async def usage(api: Caller, args: UsageArgs) -> Reply:
    report = await api.get("/api/usage", key_id=args.key_id, model=args.model, start=args.start, end=args.end)
    fields = ("day", "key_id", "model", "requests", "prompt_tokens", "completion_tokens", "errors")
    total = report.get("total") or {}
    return Reply(
        {
            "rows": [_some(row, *fields) for row in report.get("data", [])],
            "total": _some(total, "requests", "prompt_tokens", "completion_tokens", "errors"),
        }
    )


# -- the list


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args: type[Args]
    run: Callable[[Caller, Any], Awaitable[Reply]]
    annotations: ToolAnnotations


def _reads(title: str) -> ToolAnnotations:
    return ToolAnnotations(title=title, read_only_hint=True, open_world_hint=False)


def _acts(title: str, *, destructive: bool = False, open_world: bool = False) -> ToolAnnotations:
    return ToolAnnotations(title=title, read_only_hint=False, destructive_hint=destructive, open_world_hint=open_world)


TOOLS = [
    ToolSpec(
        "list_models",
        "The models this server serves (deployed, or loaded on demand when asked for) with their state and context "
        "length; with an admin key, also every model in the local registry (size, architecture, state).",
        NoArgs,
        list_models,
        _reads("List models"),
    ),
    ToolSpec(
        "list_deployments",
        "Every deployment (a model served by its own engines): name, model, state (loading, ready, sleeping, "
        "draining, stopped, failed) and why, requests in flight, and its memory in bytes. Needs an admin key.",
        NoArgs,
        list_deployments,
        _reads("List deployments"),
    ),
    ToolSpec(
        "deploy",
        "Deploy a model: placement finds it room on the devices (or refuses, naming the shortfall) and it starts "
        "loading; with `wait`, answers once it is ready. Needs an admin key.",
        DeployArgs,
        deploy,
        _acts("Deploy a model"),
    ),
    ToolSpec(
        "undeploy",
        "Stop a deployment: it takes no new requests, lets those in flight finish, then stops its engines. Needs an "
        "admin key.",
        NameArgs,
        undeploy,
        _acts("Undeploy", destructive=True),
    ),
    ToolSpec(
        "pull_model",
        "Download a model from the hub into the local registry, in the background: answers the pull's id and "
        "progress (pull_status follows it), or with `wait` its end. Needs an admin key.",
        PullArgs,
        pull_model,
        _acts("Pull a model", open_world=True),
    ),
    ToolSpec(
        "pull_status",
        "A pull's progress: state (resolving, downloading, ready, failed, cancelled), bytes done of the total, rate, "
        "time left, and the error if it failed. Needs an admin key.",
        PullStatusArgs,
        pull_status,
        _reads("Pull status"),
    ),
    ToolSpec(
        "chat",
        "Ask a model: give `prompt` (or the whole `messages` conversation). Answers the model's reply as text; the "
        "structured result adds the finish reason and the tokens used.",
        ChatArgs,
        chat,
        _acts("Chat with a model"),
    ),
    ToolSpec(
        "submit_batch",
        "Run many requests in the background (OpenAI's Batch API): one line per prompt, or per request body. "
        "Answers the batch id; batch_status shows progress and, once it ends, each line's result.",
        BatchArgs,
        submit_batch,
        _acts("Submit a batch"),
    ),
    ToolSpec(
        "batch_status",
        "A batch's state (validating, in_progress, finalizing, completed, failed, cancelled, expired), its line "
        f"counts and token usage, and once it ends each line's answer or error (the first {MAX_RESULTS}).",
        BatchStatusArgs,
        batch_status,
        _reads("Batch status"),
    ),
    ToolSpec(
        "usage",
        "Requests, tokens and errors per key, model and UTC day, with their total. An admin key sees every key "
        "(or `key_id`'s); any other key sees its own.",
        UsageArgs,
        usage,
        _reads("Usage"),
    ),
]


# -- compact views


def _some(row: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {f: row[f] for f in fields if row.get(f) is not None}


def _sampling(max_tokens: int | None, temperature: float | None) -> dict[str, Any]:
    chosen = {"max_tokens": max_tokens, "temperature": temperature}
    return {k: v for k, v in chosen.items() if v is not None}


def _deployment(d: dict[str, Any]) -> dict[str, Any]:
    memory = d.get("memory") or {}
    held = memory.get("held_bytes")
    stats = d.get("stats") or {}
    return {
        "name": d["name"],
        "model": d["model"],
        "state": d["state"],
        "reason": d.get("reason"),
        "device_kind": d.get("device_kind"),
        "devices": d.get("devices"),
        "replicas": len(d.get("replicas") or []),
        "in_flight": stats.get("in_flight", 0),
        # Measured once its engines run; until then the estimate it was placed with.
        "memory_bytes": held if held is not None else memory.get("estimate_bytes"),
        "memory_measured": held is not None,
    }


def _pull(p: dict[str, Any]) -> dict[str, Any]:
    total = p.get("bytes_total")
    done = p.get("bytes_done", 0)
    view = _some(p, "id", "model", "state", "bytes_done", "bytes_total", "eta_s", "up_to_date", "path", "error")
    if total:
        view["percent"] = round(100 * done / total, 1)
    if p.get("rate"):
        view["bytes_per_s"] = round(p["rate"])
    return view


def _batch(b: dict[str, Any]) -> dict[str, Any]:
    view = {"batch_id": b["id"], "status": b["status"], "endpoint": b.get("endpoint")}
    view["counts"] = b.get("request_counts")
    if b.get("usage"):
        view["usage"] = b["usage"]
    errors = (b.get("errors") or {}).get("data") or []
    if errors:
        view["errors"] = [_some(e, "line", "code", "message") for e in errors]
    return view


def _result(line: dict[str, Any]) -> dict[str, Any]:
    """One output or error line: the answer's text, or the error's message."""
    response = line.get("response") or {}
    body = response.get("body") or {}
    view: dict[str, Any] = {"custom_id": str(line.get("custom_id") or "")}
    if response.get("status_code") == 200:
        choice = (body.get("choices") or [{}])[0]
        message = choice.get("message")
        view["content"] = message.get("content") if isinstance(message, dict) else choice.get("text")
        view["finish_reason"] = choice.get("finish_reason")
        view["usage"] = _some(body.get("usage") or {}, "prompt_tokens", "completion_tokens")
    else:
        error = body.get("error") or line.get("error") or {}
        view["error"] = error.get("message") or "failed"
    return view


def _line_order(result: dict[str, Any]) -> tuple[int, int, str]:
    custom_id: str = result["custom_id"]
    return (0, int(custom_id), "") if custom_id.isdigit() else (1, 0, custom_id)


def _deployment_path(name: str) -> str:
    return f"/api/deployments/{quote(name, safe='')}"


def _pull_path(pull_id: str) -> str:
    return f"/api/models/pulls/{quote(pull_id, safe='')}"


async def _until(api: Caller, path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """GET ``path`` every POLL_S until ``done`` says so, or WAIT_LIMIT_S passed (then its last answer)."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while True:
        current: dict[str, Any] = await api.get(path)
        if done(current) or time.monotonic() >= deadline:
            return current
        await asyncio.sleep(POLL_S)
