"""LoRA adapters under load: streaming chat completions spread over the base model and 2 or 8 of its adapters, 64
at once, against base-only load, and against `vllm serve --enable-lora --lora-modules ...` on the same loads; and
what a first request to an adapter not loaded yet adds.

Random rank-8 adapters of the tiny model (PEFT's default Llama targets, q_proj and v_proj, unless --targets says
otherwise) are written to a temporary folder and registered (`bitinglip models import DIR --base NAME`) in a fresh
BitingLip home before its server starts, so its engine starts with LoRA sized for them (the cluster's `lora_args`).
Three servers start one after the other and stay up: BitingLip with the adapters (`bitinglip`), BitingLip with none
registered, its engine without LoRA (`bitinglip-nolora`: what merely enabling LoRA costs), and `vllm serve` with
the LoRA arguments BitingLip's engine got (read from /api/deployments: rank, target modules, max_loras,
max_cpu_loras) and every adapter as `--lora-modules`. All get the same engine arguments otherwise.

1. First request: on the fresh servers, before any load, a non-streaming chat completion of 1 token to each of a
   few adapters never used yet, then the same request again (its median of --cold-repeat), and to the base; the
   time added is the first one's minus the repeated one's. `vllm serve` loads its `--lora-modules` at start-up, so
   its first request finds the adapter loaded already; BitingLip loads an adapter on the first request naming it.
2. Load: round after round (the order of the runs rotated each round), each server streams the same requests,
   request i naming the base, or models[i % n] of [base, a1, a2] (mixed-2) or [base, a1 .. a8] (mixed-8); tokens
   counted from the stream's usage; the API process's CPU time read around each run. Targets: BitingLip's mixed-2
   tokens/s at least 0.8x its base-only's on the same server, and BitingLip's tokens/s at least 1.0x `vllm
   serve`'s on mixed-2 and mixed-8.

    .venv/bin/python scripts/bench_lora.py [--concurrency 64] [--rounds 5] [--max-tokens 32] [--json out.json] [--keep]
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
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import benchlib as bench  # scripts/ is on sys.path when this runs as a script
import httpx
import uvloop
from benchlib import CHAT, BenchError, Figures, LoadSpec, Server

LOAD_ADAPTERS = 8  # a1 .. a8: the mixed loads use the first 2 or all 8
MIXES = {"base": 0, "mixed-2": 2, "mixed-8": LOAD_ADAPTERS}  # load -> adapters it spreads over beside the base
RUNS = [
    ("bitinglip", "base"),
    ("bitinglip", "mixed-2"),
    ("bitinglip", "mixed-8"),
    ("bitinglip-nolora", "base"),
    ("vllm", "base"),
    ("vllm", "mixed-2"),
    ("vllm", "mixed-8"),
]
MIX_TARGET = 0.8  # BitingLip mixed-2 tokens/s at least this times its base-only's
VLLM_TARGET = 1.0  # BitingLip tokens/s at least this times vllm serve's, on each mixed load
TARGETS = {"bitinglip mixed-2 / base": MIX_TARGET, "bitinglip / vllm mixed-2": VLLM_TARGET,
           "bitinglip / vllm mixed-8": VLLM_TARGET}  # fmt: skip
COLD_MAX_TOKENS = 1
COLD_SEED = 101  # the first-request adapters' seeds: c1 is seed 101, ...
# The engine arguments that decide which adapters an engine serves (BitingLip's cluster.vllm.LORA_ARGS): read from
# BitingLip's deployment and given to `vllm serve` as they are, so both engines are configured alike.
LORA_ARGS = ("enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras", "lora_target_modules")


@dataclasses.dataclass
class Setup:
    model_dir: Path
    name: str  # the base's registry name, and vLLM's --served-model-name
    engine_args: dict[str, Any]
    workdir: Path
    targets: tuple[str, ...]
    rank: int
    cold_adapters: int
    cold_repeat: int
    rounds: int
    spec: LoadSpec

    def load_names(self) -> list[str]:
        return [f"a{i}" for i in range(1, LOAD_ADAPTERS + 1)]

    def cold_names(self) -> list[str]:
        return [f"c{i}" for i in range(1, self.cold_adapters + 1)]

    def models(self, mix: str) -> list[str]:
        return [self.name, *self.load_names()[: MIXES[mix]]]


# -- adapters and servers


def write_adapters(setup: Setup) -> dict[str, Path]:
    """Every adapter's folder (PEFT layout, random weights), by name: the loads' a1 .. a8, the first requests' c1 and
    on. Written by BitingLip's own `create_tiny_adapter`, as `models create-tiny --adapter-of` does, but with
    ``setup.targets`` (the CLI adapts all 7 projections)."""
    from bitinglip.models.adapters import create_tiny_adapter

    seeds = {name: seed for seed, name in enumerate(setup.load_names(), 1)}
    seeds |= {name: seed for seed, name in enumerate(setup.cold_names(), COLD_SEED)}
    root = setup.workdir / "adapters"
    return {
        name: create_tiny_adapter(
            root / name, setup.model_dir, base_name=setup.name, seed=seed, rank=setup.rank, targets=setup.targets
        )
        for name, seed in seeds.items()
    }


def bitinglip_settings(setup: Setup) -> dict[str, str]:
    return {**bench.IDLE_QUIET, **bench.engine_settings(setup.engine_args)}


async def register(setup: Setup, home: Path, adapters: dict[str, Path]) -> None:
    """The base, then each adapter, into ``home``'s registry: all before the server starts, so its engine starts
    with LoRA sized for every one (an engine restarts for an adapter it does not cover)."""
    settings = bitinglip_settings(setup)
    steps = {setup.name: ("models", "import", str(setup.model_dir), "--name", setup.name)}
    for name, path in adapters.items():
        steps[name] = ("models", "import", str(path), "--name", name, "--base", setup.name)
    for i, (name, step) in enumerate(steps.items(), 1):
        await asyncio.to_thread(bench.bitinglip_cli, home, settings, *step)
        bench.progress(f"registered {name} ({i}/{len(steps)})")


@contextlib.asynccontextmanager
async def bitinglip(setup: Setup, label: str, adapters: dict[str, Path]) -> AsyncIterator[Server]:
    """`bitinglip serve --model NAME` on a fresh home where the base and ``adapters`` are registered."""
    home = setup.workdir / label
    await register(setup, home, adapters)
    async with bench.bitinglip_server(
        home, label, bitinglip_settings(setup), serve_args=["--model", setup.name]
    ) as server:
        await bench.wait_deployment(server, setup.name, gone=False)
        yield server


async def engine_args_of(server: Server, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        reply = await client.get(f"{server.url}/api/deployments/{name}")
    if reply.status_code != 200:
        raise BenchError(f"GET /api/deployments/{name}: HTTP {reply.status_code} {reply.text[:160]}")
    args: dict[str, Any] = reply.json()["engine_args"]
    return args


def vllm_lora_flags(adapters: dict[str, Path]) -> list[str]:
    return ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]


# -- the first request to an adapter


async def timed_request(client: httpx.AsyncClient, url: str, model: str) -> float:
    """One non-streaming chat completion of COLD_MAX_TOKENS; its wall time in ms. BenchError if it fails."""
    body = {**CHAT.body(model, "Say something.", COLD_MAX_TOKENS), "stream": False}
    body.pop("stream_options")
    start = time.perf_counter()
    reply = await client.post(f"{url}{CHAT.path}", json=body)
    elapsed = (time.perf_counter() - start) * 1000
    if reply.status_code != 200:
        raise BenchError(f"{model}: HTTP {reply.status_code} {reply.text[:200]}")
    tokens = (reply.json().get("usage") or {}).get("completion_tokens")
    if tokens != COLD_MAX_TOKENS:
        raise BenchError(f"{model}: {tokens} completion tokens, expected {COLD_MAX_TOKENS}")
    return elapsed


async def first_requests(setup: Setup, label: str, url: str) -> list[dict[str, float | str]]:
    """For each fresh adapter: the base (median of cold_repeat), the adapter's first request, then it again."""
    rows: list[dict[str, float | str]] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        for _ in range(2):  # the base's own first requests (connections, caches) are not what is measured
            await timed_request(client, url, setup.name)
        for adapter in setup.cold_names():
            base = statistics.median([await timed_request(client, url, setup.name) for _ in range(setup.cold_repeat)])
            first = await timed_request(client, url, adapter)
            again = statistics.median([await timed_request(client, url, adapter) for _ in range(setup.cold_repeat)])
            rows.append({"adapter": adapter, "base_ms": base, "first_ms": first, "again_ms": again,
                         "added_ms": first - again})  # fmt: skip
            bench.progress(f"{label} first request to {adapter}: {first:.1f} ms, then {again:.1f} ms (base {base:.1f})")
    return rows


# -- load


async def measure(server: Server, setup: Setup, mix: str, spec: LoadSpec, label: str) -> Figures:
    return await bench.measure_api(server.url, server.proc.pid, CHAT, setup.models(mix), spec, label)


async def run_all(setup: Setup) -> tuple[dict[tuple[str, str], list[Figures]], dict[str, Any]]:
    adapters = await asyncio.to_thread(write_adapters, setup)
    runs: dict[tuple[str, str], list[Figures]] = {}
    info: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        up: dict[str, Server] = {}
        up["bitinglip"] = await stack.enter_async_context(bitinglip(setup, "bitinglip", adapters))
        lora = {k: v for k, v in (await engine_args_of(up["bitinglip"], setup.name)).items() if k in LORA_ARGS}
        if not lora.get("enable_lora"):
            raise BenchError(f"BitingLip's engine started without LoRA: {lora}", bench.tail(up["bitinglip"].log_path))
        info["lora_engine_args"] = lora
        bench.progress(f"BitingLip's engine LoRA arguments: {json.dumps(lora)}")
        up["bitinglip-nolora"] = await stack.enter_async_context(bitinglip(setup, "bitinglip-nolora", {}))
        if (await engine_args_of(up["bitinglip-nolora"], setup.name)).get("enable_lora"):
            raise BenchError("BitingLip's engine without adapters started with LoRA on")
        up["vllm"] = await stack.enter_async_context(
            bench.vllm_server(setup.model_dir, setup.name, {**setup.engine_args, **lora}, setup.workdir,
                              extra_flags=vllm_lora_flags(adapters))
        )  # fmt: skip
        info["first_request"] = {
            name: await first_requests(setup, name, up[name].url) for name in ("bitinglip", "vllm")
        }
        warm = LoadSpec(setup.spec.prompts[: 2 * (LOAD_ADAPTERS + 1)], 2 * (LOAD_ADAPTERS + 1), setup.spec.max_tokens)
        for server, mix in RUNS:  # every adapter of the loads loaded before the first measured run
            await measure(up[server], setup, mix, warm, f"{server} {mix}")
        for round_index in range(setup.rounds):
            shift = round_index % len(RUNS)
            for server, mix in RUNS[shift:] + RUNS[:shift]:
                figures = await measure(up[server], setup, mix, setup.spec, f"{server} {mix}")
                runs.setdefault((server, mix), []).append(figures)
                errors = f", {figures.errors} ERRORS e.g. {figures.error_examples[0]}" if figures.errors else ""
                bench.progress(
                    f"round {round_index + 1}/{setup.rounds} {server} {mix}: {figures.tokens_per_s:,.0f} tokens/s, "
                    f"TTFT p50 {figures.ttft_p50_ms:.0f} ms{errors}"
                )
        async with httpx.AsyncClient(timeout=10.0) as client:  # which adapters BitingLip's engine holds now
            reply = await client.get(f"{up['bitinglip'].url}/api/deployments/{setup.name}")
            if reply.status_code == 200:
                info["held_adapters"] = [r["adapters"] for r in reply.json()["replicas"]]
    return runs, info


# -- report


def tokens(runs: dict[tuple[str, str], list[Figures]], server: str, mix: str) -> float:
    return bench.median_of(runs.get((server, mix), []), "tokens_per_s")


def verdict(value: float, target: float) -> tuple[bool, str]:
    ok = math.isfinite(value) and value >= target
    return ok, "PASS" if ok else "FAIL"


def ratios(runs: dict[tuple[str, str], list[Figures]]) -> dict[str, float]:
    def r(top: tuple[str, str], bottom: tuple[str, str]) -> float:
        b = tokens(runs, *bottom)
        return tokens(runs, *top) / b if b else math.nan

    return {
        "bitinglip mixed-2 / base": r(("bitinglip", "mixed-2"), ("bitinglip", "base")),
        "bitinglip mixed-8 / base": r(("bitinglip", "mixed-8"), ("bitinglip", "base")),
        "bitinglip mixed-2 / base without LoRA": r(("bitinglip", "mixed-2"), ("bitinglip-nolora", "base")),
        "bitinglip base, LoRA on / off": r(("bitinglip", "base"), ("bitinglip-nolora", "base")),
        "vllm mixed-2 / base": r(("vllm", "mixed-2"), ("vllm", "base")),
        "vllm mixed-8 / base": r(("vllm", "mixed-8"), ("vllm", "base")),
        **{f"bitinglip / vllm {mix}": r(("bitinglip", mix), ("vllm", mix)) for mix in MIXES},
    }


def first_request_summary(rows: list[dict[str, float | str]]) -> dict[str, float]:
    def med(key: str) -> float:
        return float(statistics.median([float(row[key]) for row in rows])) if rows else math.nan

    return {key: med(key) for key in ("added_ms", "first_ms", "again_ms", "base_ms")}


def print_report(setup: Setup, runs: dict[tuple[str, str], list[Figures]], info: dict[str, Any]) -> bool:
    spec = setup.spec
    print(f"\nmodel {setup.model_dir}, engine arguments {json.dumps(setup.engine_args)}")
    print(f"adapters: rank {setup.rank}, targets {', '.join(setup.targets)}; BitingLip's engine LoRA arguments (also "
          f"vllm serve's): {json.dumps(info.get('lora_engine_args'))}")  # fmt: skip
    print(f"streaming chat, {spec.concurrency} at once, {len(spec.prompts)} requests per run, {spec.max_tokens} tokens "
          f"each; medians of {setup.rounds} rounds, runs rotated")  # fmt: skip
    print(f"{'server':<18}{'load':<9}{'tokens/s':>10}{'min':>8}{'max':>8}{'TTFT p50':>10}{'TTFT p99':>10}"
          f"{'CPU s/1k':>10}")  # fmt: skip
    for (server, mix), figures in sorted(runs.items(), key=lambda kv: RUNS.index(kv[0])):
        values = [f.tokens_per_s for f in figures]
        print(
            f"{server:<18}{mix:<9}{tokens(runs, server, mix):>10,.0f}{min(values):>8,.0f}{max(values):>8,.0f}"
            f"{bench.median_of(figures, 'ttft_p50_ms'):>10.0f}{bench.median_of(figures, 'ttft_p99_ms'):>10.0f}"
            f"{bench.median_of(figures, 'api_cpu_per_1k_tokens'):>10.3f}"
        )
    found = ratios(runs)
    met = True
    for key, value in found.items():
        target = TARGETS.get(key)
        if target is None:
            print(f"{key} tokens/s: {value:.2f}x")
            continue
        ok, word = verdict(value, target)
        met &= ok
        print(f"{key} tokens/s: {value:.2f}x (target >= {target}x) {word}")
    for name, rows in info.get("first_request", {}).items():
        s = first_request_summary(rows)
        each = ", ".join(f"{float(row['added_ms']):+.1f}" for row in rows)
        print(f"{name} first request to an adapter ({len(rows)} adapters, {COLD_MAX_TOKENS} token): "
              f"{s['first_ms']:.1f} ms, then {s['again_ms']:.1f} ms, base {s['base_ms']:.1f} ms: "
              f"{s['added_ms']:+.1f} ms added (median; each {each})")  # fmt: skip
    if "held_adapters" in info:
        print(f"BitingLip's engine holds after the runs: {info['held_adapters']}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=bench.REPO / "data/models/tiny", help="model directory")
    parser.add_argument("--name", help="the base's registry and served name (default: the directory's name)")
    parser.add_argument("--concurrency", type=bench.positive_int, default=64)
    parser.add_argument(
        "--requests", type=bench.positive_int, help="per run (default 32 x concurrency: short runs are noisy)"
    )
    parser.add_argument("--max-tokens", type=bench.positive_int, default=32)
    parser.add_argument("--prompt-tokens", type=bench.positive_int, default=64)
    parser.add_argument("--rounds", type=bench.positive_int, default=5)
    parser.add_argument("--rank", type=bench.positive_int, default=8, help="the adapters' LoRA rank")
    parser.add_argument("--targets", default="q_proj,v_proj", help="the modules the adapters adapt (comma-separated)")
    parser.add_argument("--cold-adapters", type=bench.positive_int, default=4, help="adapters for the first requests")
    parser.add_argument("--cold-repeat", type=bench.positive_int, default=3, help="repeated requests per median")
    parser.add_argument("--engine-arg", type=bench.parse_engine_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="override or add a vLLM engine argument for every server (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the adapters and the servers' homes and logs")
    args = parser.parse_args()
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if not targets:
        parser.error("--targets names no module")
    if args.cold_adapters + LOAD_ADAPTERS > 16:
        parser.error(f"at most {16 - LOAD_ADAPTERS} --cold-adapters: every adapter stays loaded (max_cpu_loras 16)")
    model_dir = bench.model_dir_of(args.model)
    if model_dir is None:
        return 2
    bench.warn_about_machine()
    os.environ.update(bench.IDLE_QUIET)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # this process imports vLLM only to read its flags
    count = args.requests or 32 * args.concurrency
    prompts = bench.make_prompts(model_dir, count, args.prompt_tokens)
    prompts = list(itertools.islice(itertools.cycle(prompts), count))
    workdir = Path(tempfile.mkdtemp(prefix="bitinglip-bench-lora-"))
    setup = Setup(
        model_dir=model_dir, name=args.name or model_dir.name,
        engine_args={**bench.DEFAULT_ENGINE_ARGS, **dict(args.engine_arg)}, workdir=workdir,
        targets=targets, rank=args.rank, cold_adapters=args.cold_adapters, cold_repeat=args.cold_repeat,
        rounds=args.rounds, spec=LoadSpec(prompts, args.concurrency, args.max_tokens),
    )  # fmt: skip
    uvloop.install()
    try:
        runs, info = asyncio.run(run_all(setup))
    except BenchError as exc:
        print(f"!!! NOT MEASURED: {exc.summary()}")
        if exc.output:
            print(exc.output)
        return 1
    finally:
        if args.keep:
            bench.progress(f"kept the adapters, the servers' homes and logs in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    met = print_report(setup, runs, info)
    errors = sum(f.errors for figures in runs.values() for f in figures)
    if errors:
        print(f"!!! {errors} requests FAILED; their runs count only the rest")
    if args.json:
        out = {
            "setup": {"model": str(model_dir), "name": setup.name, "engine_args": setup.engine_args,
                      "adapter_rank": setup.rank, "adapter_targets": list(targets), "concurrency": args.concurrency,
                      "requests": count, "max_tokens": args.max_tokens, "prompt_tokens": args.prompt_tokens,
                      "rounds": args.rounds, "cold_max_tokens": COLD_MAX_TOKENS},
            "lora_engine_args": info.get("lora_engine_args"),
            "tokens_per_s_median": {f"{s} {m}": bench.finite(tokens(runs, s, m)) for s, m in runs},
            "ratios": {k: bench.finite(v) for k, v in ratios(runs).items()},
            "first_request": info.get("first_request"),
            "first_request_median": {k: {f: bench.finite(v) for f, v in first_request_summary(rows).items()}
                                     for k, rows in info.get("first_request", {}).items()},
            "runs": {f"{s} {m}": [bench.json_safe(dataclasses.asdict(f)) for f in v] for (s, m), v in runs.items()},
        }  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if met and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
