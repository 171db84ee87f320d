"""The agent APIs under load: streaming `/v1/responses` and `/v1/messages` against chat completions on BitingLip,
and against `vllm serve`'s own `/v1/responses` and `/v1/messages`, the same load on the same machine.

Both servers are started (one after the other) and stay up; then, round after round, every API runs on every
server in turn, the order rotated each round. Each request streams one user message of the same prompt and
reads the API's own events to the end (`[DONE]`, `response.completed`, `message_stop`); the tokens counted are
what the stream's usage reports. For each server the API process's own CPU time is read around each run. The
targets checked: BitingLip's API CPU per token for Responses and Messages at most 1.1x its chat completions', and
its tokens/s at least 1.1x `vllm serve`'s on the same API.

    .venv/bin/python scripts/bench_agent_apis.py [--concurrency 64] [--rounds 5] [--max-tokens 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvloop
from benchlib import (  # scripts/ is on sys.path when this runs as a script
    CHAT,
    DEFAULT_ENGINE_ARGS,
    IDLE_QUIET,
    REPO,
    Api,
    BenchError,
    Figures,
    LoadSpec,
    bitinglip_server,
    engine_settings,
    json_safe,
    make_prompts,
    measure_api,
    median_of,
    model_dir_of,
    positive_int,
    progress,
    vllm_server,
    warn_about_machine,
)

APIS = ("chat", "responses", "messages")
SERVERS = ("bitinglip", "vllm")
CPU_TARGET = 1.1  # Responses and Messages API CPU per token at most this times chat's
SPEED_TARGET = 1.1  # BitingLip's tokens/s at least this times vllm serve's, per API


def _responses_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    # `ignore_eos` is vLLM's extension, which both servers take here: every request makes max_tokens.
    return {
        "model": model,
        "input": prompt,
        "max_output_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "store": False,
    }


def _responses_read(event: dict[str, Any]) -> tuple[bool, int | None, bool]:
    kind = event.get("type")
    if kind in ("response.completed", "response.incomplete"):
        return False, event["response"]["usage"]["output_tokens"], True
    if kind in ("response.failed", "error"):
        raise BenchError(f"error event: {json.dumps(event)[:160]}")
    return kind == "response.output_text.delta", None, False


def _messages_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }


def _messages_read(event: dict[str, Any]) -> tuple[bool, int | None, bool]:
    kind = event.get("type")
    if kind == "message_delta":
        return False, event["usage"]["output_tokens"], False
    if kind == "error":
        raise BenchError(f"error event: {json.dumps(event)[:160]}")
    return kind == "content_block_delta", None, kind == "message_stop"


API_SHAPES = {
    "chat": CHAT,
    "responses": Api("/v1/responses", _responses_body, _responses_read),
    "messages": Api("/v1/messages", _messages_body, _messages_read),
}


@dataclasses.dataclass
class Up:
    url: str
    pid: int


async def measure(up: Up, model: str, api_name: str, spec: LoadSpec) -> Figures:
    return await measure_api(up.url, up.pid, API_SHAPES[api_name], [model], spec, api_name)


def print_report(runs: dict[tuple[str, str], list[Figures]], spec: LoadSpec, rounds: int) -> bool:
    """A row per server and API (medians over the rounds), then the targets; True when every target is met."""
    print(f"\nstreaming, {spec.concurrency} at once, {len(spec.prompts)} requests per run, up to {spec.max_tokens} "
          f"tokens each; medians of {rounds} rounds, servers and APIs rotated")  # fmt: skip
    header = f"{'server':<10}{'API':<11}{'tokens/s':>10}{'min':>8}{'TTFT p50':>10}{'TTFT p99':>10}{'CPU s/1k':>10}"
    print(header)
    for (server, api), figures in runs.items():
        lowest = min((f.tokens_per_s for f in figures), default=math.nan)
        cpu = median_of(figures, "api_cpu_per_1k_tokens")
        print(
            f"{server:<10}{api:<11}{median_of(figures, 'tokens_per_s'):>10,.0f}{lowest:>8,.0f}"
            f"{median_of(figures, 'ttft_p50_ms'):>10.0f}{median_of(figures, 'ttft_p99_ms'):>10.0f}{cpu:>10.3f}"
        )
    met = True
    chat_cpu = median_of(runs.get(("bitinglip", "chat"), []), "api_cpu_per_1k_tokens")
    for api in ("responses", "messages"):
        ours = runs.get(("bitinglip", api), [])
        cpu = median_of(ours, "api_cpu_per_1k_tokens") / chat_cpu
        ok = math.isfinite(cpu) and cpu <= CPU_TARGET
        met &= ok
        verdict = "ok" if ok else "MISSED"
        print(f"bitinglip {api} / chat API CPU per token: {cpu:.2f}x (target <= {CPU_TARGET}x) {verdict}")
        theirs = runs.get(("vllm", api), [])
        speed = median_of(ours, "tokens_per_s") / median_of(theirs, "tokens_per_s") if theirs else math.nan
        ok = math.isfinite(speed) and speed >= SPEED_TARGET
        met &= ok
        verdict = "ok" if ok else "MISSED"
        print(f"bitinglip / vllm serve {api} tokens/s: {speed:.2f}x (target >= {SPEED_TARGET}x) {verdict}")
    return met


@contextlib.asynccontextmanager
async def start(name: str, model_dir: Path, engine_args: dict[str, Any], workdir: Path) -> AsyncIterator[Up]:
    if name == "vllm":
        async with vllm_server(model_dir, model_dir.name, engine_args, workdir) as server:
            yield Up(server.url, server.proc.pid)
        return
    async with bitinglip_server(
        workdir / name, name, {**IDLE_QUIET, **engine_settings(engine_args)}, serve_args=["--model", str(model_dir)]
    ) as server:
        yield Up(server.url, server.proc.pid)


async def run_all(args: argparse.Namespace, model_dir: Path, spec: LoadSpec, workdir: Path) -> dict[Any, Any]:
    engine_args = dict(DEFAULT_ENGINE_ARGS)
    runs: dict[tuple[str, str], list[Figures]] = {}
    async with contextlib.AsyncExitStack() as stack:
        up = {name: await stack.enter_async_context(start(name, model_dir, engine_args, workdir)) for name in SERVERS}
        pairs = [(server, api) for api in APIS for server in SERVERS]
        warm = LoadSpec(spec.prompts[:8], 8, spec.max_tokens)
        for server, api in pairs:
            await measure(up[server], model_dir.name, api, warm)
        for round_index in range(args.rounds):
            shift = round_index % len(pairs)
            for server, api in pairs[shift:] + pairs[:shift]:
                figures = await measure(up[server], model_dir.name, api, spec)
                runs.setdefault((server, api), []).append(figures)
                errors = f", {figures.errors} ERRORS e.g. {figures.error_examples[0]}" if figures.errors else ""
                progress(
                    f"round {round_index + 1}/{args.rounds} {server} {api}: {figures.tokens_per_s:,.0f} tokens/s, "
                    f"API CPU {figures.api_cpu_per_1k_tokens or math.nan:.3f} s/1k tokens{errors}"
                )
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "data/models/tiny", help="model directory")
    parser.add_argument("--concurrency", type=positive_int, default=64)
    parser.add_argument(
        "--requests", type=positive_int, help="per run (default 32 x concurrency: short runs are noisy)"
    )
    parser.add_argument("--max-tokens", type=positive_int, default=32)
    parser.add_argument("--prompt-tokens", type=positive_int, default=64)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    model_dir = model_dir_of(args.model)
    if model_dir is None:
        return 2
    warn_about_machine()
    os.environ.update(IDLE_QUIET)
    count = args.requests or 32 * args.concurrency
    prompts = list(itertools.islice(itertools.cycle(make_prompts(model_dir, count, args.prompt_tokens)), count))
    spec = LoadSpec(prompts, args.concurrency, args.max_tokens)
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as workdir:
        uvloop.install()
        try:
            runs = asyncio.run(run_all(args, model_dir, spec, Path(workdir)))
        except BenchError as exc:
            print(f"!!! NOT MEASURED: {exc.summary()}")
            return 1
    met = print_report(runs, spec, args.rounds)
    errors = sum(f.errors for figures in runs.values() for f in figures)
    if errors:
        print(f"!!! {errors} requests FAILED; their runs count only the rest")
    if args.json:
        out = {f"{s} {a}": [json_safe(dataclasses.asdict(f)) for f in figures] for (s, a), figures in runs.items()}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if met and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
