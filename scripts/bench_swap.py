"""Model swapping and several deployments: what loading on demand costs, and what a second deployment costs.

1. Cold start to first token, for the tiny model:
   - bitinglip on-demand: a running `bitinglip serve` with nothing deployed (cluster.model = "") and the model
     registered; the time from sending a streaming /v1/completions request naming it to its first text chunk.
     Between rounds the deployment is removed (DELETE /api/deployments/{name}, then GET until 404).
   - vllm serve cold: the time from launching vLLM's own OpenAI server on the same model to the first text
     chunk of the same request (retried while the server does not accept connections); a fresh process per round.
   - warm TTFT: the same request again, once the model is loaded (both servers).
2. Steady-state throughput of one server with two deployments of the same model (alpha and beta, declared in
   settings): tokens/s with every request to alpha, then with half to alpha and half to beta at once, at the
   same total concurrency, after a short warm-up.

Every engine gets the same arguments (bench.SMALL_ENGINE_ARGS, as CLI flags for vLLM, as BITINGLIP_CLUSTER__ENGINE for
BitingLip). Servers run strictly one after the other, each stopped with its whole process group before the next
(the build machines have 2 cores). BitingLip's cold rounds run first, so its first round is the one that may meet
a cold page cache; every round's value is printed.

    .venv/bin/python scripts/bench_swap.py [--rounds 2] [--concurrency 32] [--max-tokens 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as bench  # scripts/ is on sys.path when this runs as a script
import httpx
from benchlib import BenchError, Figures, LoadSpec, Sample, Server

PAIR = ("alpha", "beta")
COLD_MAX_TOKENS = 16
WARMUP_REQUESTS = 8  # per deployment
# Errors that mean "the server is not listening yet": the request is sent again.
NOT_YET = ("ConnectError", "ConnectTimeout", "RemoteProtocolError", "ReadError")


@dataclasses.dataclass
class Context:
    model_dir: Path
    name: str  # what the cold-start request names: the registry name, and vLLM's --served-model-name
    engine_args: dict[str, Any]
    workdir: Path
    rounds: int
    warm_requests: int
    repeat: int
    spec: LoadSpec
    cold_body: dict[str, Any]


async def first_token(server: Server, body: dict[str, Any]) -> tuple[Sample, float]:
    """Send the streaming request until the server accepts it; fail at once if the server exits or answers
    with an error. Returns the answered attempt's sample and when it was sent (time.perf_counter)."""
    deadline = time.monotonic() + bench.READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=httpx.Timeout(bench.READY_TIMEOUT_S, connect=2.0)) as client:
        while time.monotonic() < deadline:
            sent = time.perf_counter()
            task = asyncio.create_task(bench.stream_completion(client, server.url, body))
            while not task.done():
                if server.proc.poll() is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise BenchError(
                        f"the server exited with code {server.proc.returncode}", bench.tail(server.log_path)
                    )
                await asyncio.wait({task}, timeout=0.5)
            sample = task.result()
            if sample.error is None:
                return sample, sent
            if not sample.error.startswith(NOT_YET):
                raise BenchError(f"the request failed: {sample.error}", bench.tail(server.log_path))
            await asyncio.sleep(0.05)
    raise BenchError(f"no token after {bench.READY_TIMEOUT_S:.0f} s", bench.tail(server.log_path))


async def warm_ttfts(server: Server, ctx: Context) -> list[float]:
    return [(await first_token(server, ctx.cold_body))[0].ttft_s or math.nan for _ in range(ctx.warm_requests)]


# -- BitingLip


def bitinglip_server(
    ctx: Context, label: str, extra_env: dict[str, str]
) -> contextlib.AbstractAsyncContextManager[Server]:
    """`bitinglip serve` with its own home, nothing declared unless extra_env declares it, the model registered."""
    settings = {
        "BITINGLIP_CLUSTER__MODEL": "",
        "BITINGLIP_CLUSTER__LOAD_ON_DEMAND": "true",
        "BITINGLIP_CLUSTER__ENGINE": "@json " + json.dumps(ctx.engine_args),
        **extra_env,
    }
    home = ctx.workdir / label
    return bench.bitinglip_server(home, f"bitinglip ({label})", settings, register=(ctx.model_dir, ctx.name))


async def cold_bitinglip(ctx: Context) -> tuple[list[float], list[float]]:
    cold: list[float] = []
    warm: list[float] = []
    async with bitinglip_server(ctx, "on-demand", {}) as server:
        for r in range(1, ctx.rounds + 1):
            await bench.wait_deployment(server, ctx.name, gone=True)  # not deployed: the request must load it
            sample, _ = await first_token(server, ctx.cold_body)
            cold.append(sample.ttft_s or math.nan)
            warm += await warm_ttfts(server, ctx)
            bench.progress(
                f"bitinglip round {r}: cold {cold[-1]:.2f} s to first token, warm TTFT {warm[-1] * 1000:.1f} ms"
            )
            async with httpx.AsyncClient(timeout=30.0) as client:
                r_del = await client.delete(f"{server.url}/api/deployments/{ctx.name}")
            if r_del.status_code not in (200, 202):
                raise BenchError(f"DELETE /api/deployments/{ctx.name}: HTTP {r_del.status_code} {r_del.text[:160]}")
    return cold, warm


# -- vLLM


async def cold_vllm(ctx: Context) -> tuple[list[float], list[float]]:
    flags = bench.vllm_flags(ctx.engine_args)
    cold: list[float] = []
    warm: list[float] = []
    for r in range(1, ctx.rounds + 1):
        port = bench.free_port()
        cmd = [
            sys.executable, "-m", bench.VLLM_SERVER_MODULE, "--host", "127.0.0.1", "--port", str(port),
            "--model", str(ctx.model_dir), "--served-model-name", ctx.name, *flags,
        ]  # fmt: skip
        log_path = ctx.workdir / f"vllm-{r}.log"
        launched = time.perf_counter()
        with bench.server_process(cmd, bench.child_env({}), log_path) as proc:
            server = Server(f"http://127.0.0.1:{port}", proc, log_path)
            sample, sent = await first_token(server, ctx.cold_body)
            cold.append(sent + (sample.ttft_s or math.nan) - launched)  # launch to the answered attempt's first text
            warm += await warm_ttfts(server, ctx)
            bench.progress(f"vllm round {r}: cold {cold[-1]:.2f} s to first token, warm TTFT {warm[-1] * 1000:.1f} ms")
    return cold, warm


# -- throughput, one deployment vs two


async def run_load(server: Server, plan: dict[str, LoadSpec], label: str) -> Figures:
    start = time.perf_counter()
    results = await asyncio.gather(*(bench.measure_http(server.url, name, spec) for name, spec in plan.items()))
    wall = time.perf_counter() - start
    figures = bench.summarize(label, [s for samples, _ in results for s in samples], wall)
    errors = f", {figures.errors} ERRORS" if figures.errors else ""
    bench.progress(
        f"{label}: {wall:.2f} s, {figures.tokens_per_s:,.0f} tokens/s, TTFT p50 {figures.ttft_p50_ms:.0f} ms{errors}"
    )
    return figures


async def throughput(ctx: Context) -> dict[str, list[Figures]]:
    declared = [{"model": str(ctx.model_dir), "name": name} for name in PAIR]
    extra = {"BITINGLIP_CLUSTER__DEPLOYMENTS": "@json " + json.dumps(declared)}
    spec, half = ctx.spec, ctx.spec.concurrency // 2
    plans = {
        "one": {PAIR[0]: spec},
        "two": {
            PAIR[0]: LoadSpec(spec.prompts[0::2], half, spec.max_tokens),
            PAIR[1]: LoadSpec(spec.prompts[1::2], spec.concurrency - half, spec.max_tokens),
        },
    }
    runs: dict[str, list[Figures]] = {"one": [], "two": []}
    async with bitinglip_server(ctx, "two-deployments", extra) as server:
        for name in PAIR:
            await bench.wait_deployment(server, name, gone=False)
        bench.progress(f"warming up: {WARMUP_REQUESTS} requests to each of {', '.join(PAIR)}")
        warmup = LoadSpec(spec.prompts[:WARMUP_REQUESTS], WARMUP_REQUESTS, spec.max_tokens)
        await run_load(server, dict.fromkeys(PAIR, warmup), "warm-up")
        for r in range(ctx.repeat):  # one two, two one, ...: a drift of the machine falls on both alike
            for label in ("one", "two") if r % 2 == 0 else ("two", "one"):
                runs[label].append(await run_load(server, plans[label], label))
    return runs


# -- report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def print_report(
    ctx: Context, cold: dict[str, list[float]], warm: dict[str, list[float]], runs: dict[str, list[Figures]]
) -> None:
    b, v = "bitinglip", "vllm"
    print(f"\nmodel {ctx.model_dir}, engine arguments {json.dumps(ctx.engine_args)}")
    print(f"cold/warm request: {COLD_MAX_TOKENS} tokens, {ctx.rounds} rounds, {ctx.warm_requests} warm requests each")
    if cold:
        cb, cv = median(cold.get(b, [])), median(cold.get(v, []))
        print(f"cold start to first token (s)   bitinglip on-demand {cb:8.2f}   vllm serve cold {cv:8.2f}"
              f"   bitinglip/vllm {bench.ratio(cb, cv)}")  # fmt: skip
        for name, values in cold.items():
            print(f"  {name} rounds: {', '.join(f'{x:.2f}' for x in values)}")
        wb, wv = (median(warm.get(n, [])) * 1000 for n in (b, v))
        print(f"warm TTFT (ms)                  bitinglip           {wb:8.1f}   vllm serve      {wv:8.1f}"
              f"   bitinglip/vllm {bench.ratio(wb, wv)}")  # fmt: skip
    if runs:
        one, two = (median([f.tokens_per_s for f in runs.get(k, [])]) for k in ("one", "two"))
        print(f"tokens/s                        one deployment      {one:8,.0f}   two deployments {two:8,.0f}"
              f"   two/one {bench.ratio(two, one)}")  # fmt: skip
        print(f"  {len(ctx.spec.prompts)} requests, {ctx.spec.concurrency} concurrent, {ctx.spec.max_tokens} tokens"
              f" each; median of {ctx.repeat} runs")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=bench.REPO / "data/models/tiny", help="model directory")
    parser.add_argument("--name", help="the model's registry and served name (default: the directory's name)")
    parser.add_argument("--parts", default="cold,throughput", help="cold, throughput or both (comma-separated)")
    parser.add_argument("--rounds", type=bench.positive_int, default=2, help="cold starts per server")
    parser.add_argument("--warm-requests", type=bench.positive_int, default=3, help="warm requests after each cold one")
    parser.add_argument("--concurrency", type=bench.positive_int, default=32, help="total, halved per deployment")
    parser.add_argument("--requests", type=bench.positive_int, default=128, help="requests per throughput run")
    parser.add_argument("--max-tokens", type=bench.positive_int, default=128)
    parser.add_argument("--prompt-tokens", type=bench.positive_int, default=64)
    parser.add_argument("--repeat", type=bench.positive_int, default=2, help="throughput runs of each kind")
    parser.add_argument("--engine-arg", type=bench.parse_engine_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="override or add a vLLM engine argument for every server (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"cold", "throughput"}:
        parser.error("--parts is cold, throughput or cold,throughput")
    if args.concurrency < 2:
        parser.error("--concurrency must be at least 2 (it is split between two deployments)")
    model_dir = bench.model_dir_of(args.model)
    if model_dir is None:
        return 2
    bench.warn_about_machine()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # this process imports vLLM only to read its flags
    engine_args = {**bench.SMALL_ENGINE_ARGS, **dict(args.engine_arg)}
    prompts = bench.make_prompts(model_dir, args.requests, args.prompt_tokens)
    name = args.name or model_dir.name
    cold: dict[str, list[float]] = {}
    warm: dict[str, list[float]] = {}
    runs: dict[str, list[Figures]] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-swap-") as workdir:
        ctx = Context(model_dir, name, engine_args, Path(workdir), args.rounds, args.warm_requests, args.repeat,
                      LoadSpec(prompts, args.concurrency, args.max_tokens),
                      bench.completion_body(name, prompts[0], COLD_MAX_TOKENS))  # fmt: skip
        steps = [("bitinglip", cold_bitinglip), ("vllm", cold_vllm)] if "cold" in parts else []
        for target, step in steps:
            bench.progress(f"=== cold start: {target}")
            try:
                cold[target], warm[target] = asyncio.run(step(ctx))
            except BenchError as exc:
                bench.failed(failures, f"cold start {target}", exc)
        if "throughput" in parts:
            bench.progress("=== throughput: one deployment vs two")
            try:
                runs = asyncio.run(throughput(ctx))
            except BenchError as exc:
                bench.failed(failures, "throughput", exc)
        print_report(ctx, cold, warm, runs)
    errors = sum(f.errors for figures in runs.values() for f in figures)
    if errors:
        print(f"\n!!! {errors} throughput requests FAILED; the figures count only the rest")
    for label, reason in failures.items():
        print(f"\n!!! {label}: NOT MEASURED: {reason}")
    if args.json:
        figures = {
            "setup": {"model": str(model_dir), "name": name, "engine_args": engine_args, "rounds": args.rounds,
                      "cold_max_tokens": COLD_MAX_TOKENS, "concurrency": args.concurrency,
                      "requests": args.requests, "max_tokens": args.max_tokens, "repeat": args.repeat},
            "cold_start_s": {k: [bench.finite(x) for x in v] for k, v in cold.items()},
            "cold_start_median_s": {k: bench.finite(median(v)) for k, v in cold.items()},
            "warm_ttft_ms": {k: [bench.finite(x * 1000) for x in v] for k, v in warm.items()},
            "warm_ttft_median_ms": {k: bench.finite(median(v) * 1000) for k, v in warm.items()},
            "tokens_per_s_median": {k: bench.finite(median([f.tokens_per_s for f in v])) for k, v in runs.items()},
            "throughput_runs": {k: [bench.json_safe(dataclasses.asdict(f)) for f in v] for k, v in runs.items()},
            "failures": failures,
        }  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if not failures and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
