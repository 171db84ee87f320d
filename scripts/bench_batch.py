"""BitingLip's Batches API vs vLLM's offline LLM.generate: the same prompts on the same engine, one after the other.

1. BitingLip batch: `bitinglip serve` with its own home, the model registered (`bitinglip models import`) and
   declared as the one deployment (BITINGLIP_CLUSTER__MODEL), warmed up (a few streaming requests, a small batch).
   N /v1/completions lines (--lines; --max-tokens M each, ignore_eos, temperature 1.0) are uploaded (POST
   /v1/files), run (POST /v1/batches) and polled every 0.1 s. Elapsed: from just before the create to the poll
   that sees `completed`; output tokens: usage.completion_tokens summed over the output file; CPU: the server's.
2. Interactive TTFT, same server: K (--interactive) sequential streaming 16-token completions with the server
   idle, then while a second batch of the same N lines runs (cancelled afterwards if still running); p50, p90.
3. vLLM offline: a subprocess (own process group, the servers' environment) building LLM(model, **engine
   arguments), warming up, then timing one LLM.generate over the same N prompts with the same sampling.

Target: BitingLip's batch output tokens/s at least 0.90x the offline figure. Both engines get the same arguments
(benchlib.SMALL_ENGINE_ARGS, plus --engine-arg) and run strictly one at a time, each stopped with its whole process
group before the other starts (the build machines have 2 cores); --order says which goes first.

    .venv/bin/python scripts/bench_batch.py [--lines 1000] [--max-tokens 64] [--interactive 20]
        [--order bitinglip-first|offline-first] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib as bench  # scripts/ is on sys.path when this runs as a script
import httpx
import psutil
from benchlib import BenchError, Server

TARGET_RATIO = 0.90
POLL_S = 0.1
INTERACTIVE_MAX_TOKENS = 16
WARMUP_REQUESTS = 8  # streaming requests, then a batch of as many lines, before anything is timed
RUNNING_FOR_S = 0.5  # the second batch counts as running this long after it is in_progress (or a line is done)
TERMINAL = ("completed", "failed", "expired", "cancelled")
ORDERS = ("bitinglip-first", "offline-first")
# Run in the offline subprocess: argv[1] is this directory, argv[2] the run's JSON description.
OFFLINE_CMD = "import sys; sys.path.insert(0, sys.argv[1]); import bench_batch; bench_batch.offline_worker(sys.argv[2])"


@dataclasses.dataclass
class Throughput:
    label: str
    lines: int
    elapsed_s: float
    output_tokens: int
    cpu_s: float | None  # the process and its descendants (the engine core), user + system, over elapsed_s
    tokens_per_s: float = 0.0
    requests_per_s: float = 0.0

    def __post_init__(self) -> None:
        self.tokens_per_s = self.output_tokens / self.elapsed_s
        self.requests_per_s = self.lines / self.elapsed_s


@dataclasses.dataclass
class Results:
    bitinglip: Throughput | None = None
    offline: Throughput | None = None
    ttft_idle_s: list[float] = dataclasses.field(default_factory=list)
    ttft_beside_s: list[float] = dataclasses.field(default_factory=list)
    # Interactive requests that finished with the second batch still running (all K unless it ended early).
    overlapped: int = 0


@dataclasses.dataclass
class Setup:
    model_dir: Path
    name: str  # the model's registry and served name
    engine_args: dict[str, Any]
    workdir: Path
    prompts: list[str]
    max_tokens: int
    interactive: int
    timeout_s: float


def make_prompts(count: int) -> list[str]:
    """Short texts that differ in number, start and length: stretches of benchlib's FILLER."""
    words = bench.FILLER.split()
    n, words = len(words), words * 2  # a stretch may run past the end
    return [f"Request {i}: " + " ".join(words[i % n : i % n + 6 + i % 9]) for i in range(count)]


def batch_lines(name: str, prompts: list[str], max_tokens: int) -> bytes:
    lines = (
        {"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": name, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 1.0}}
        for i, prompt in enumerate(prompts)
    )  # fmt: skip
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its live descendants (the engine core); None if one vanished."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return sum(sum(proc.cpu_times()[:2]) for proc in [root, *root.children(recursive=True)])
    return None


def cpu_delta(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


# -- BitingLip


class Api:
    """The Files and Batches calls on one running server; any failure is a BenchError with the server's log."""

    def __init__(self, client: httpx.AsyncClient, server: Server, timeout_s: float) -> None:
        self.client, self.server, self.timeout_s = client, server, timeout_s

    def error(self, message: str) -> BenchError:
        return BenchError(message, bench.tail(self.server.log_path))

    async def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        if self.server.proc.poll() is not None:
            raise self.error(f"the server exited with code {self.server.proc.returncode}")
        try:
            response = await self.client.request(method, f"{self.server.url}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise self.error(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code not in ok:
            raise self.error(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    async def upload(self, data: bytes) -> str:
        files = {"file": ("bench.jsonl", data, "application/jsonl")}
        response = await self.call("POST", "/v1/files", files=files, data={"purpose": "batch"})
        return str(response.json()["id"])

    async def create(self, file_id: str) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
        return dict((await self.call("POST", "/v1/batches", json=body)).json())

    async def batch(self, batch_id: str) -> dict[str, Any]:
        return dict((await self.call("GET", f"/v1/batches/{batch_id}")).json())

    async def until(self, batch: dict[str, Any], timeout_s: float, running: bool = False) -> dict[str, Any]:
        """Poll until the batch has ended; with running=True, until it is in_progress (or has ended)."""
        deadline = time.monotonic() + timeout_s
        while batch["status"] not in TERMINAL and not (running and batch["status"] == "in_progress"):
            if time.monotonic() > deadline:
                raise self.error(f"batch {batch['id']} still {batch['status']} after {timeout_s:.0f} s")
            await asyncio.sleep(POLL_S)
            batch = await self.batch(batch["id"])
        return batch

    async def run_batch(self, file_id: str, lines: int, label: str) -> Throughput:
        """Create a batch of the uploaded file, wait for it, check its output; times create to `completed`."""
        cpu_before = cpu_seconds(self.server.proc.pid)
        start = time.perf_counter()
        batch = await self.until(await self.create(file_id), self.timeout_s)
        elapsed = time.perf_counter() - start
        cpu = cpu_delta(cpu_before, cpu_seconds(self.server.proc.pid))
        counts = batch["request_counts"]
        if batch["status"] != "completed" or counts["failed"]:
            raise self.error(f"{label}: batch {batch['status']}, {counts}, errors {batch.get('errors')}")
        content = await self.call("GET", f"/v1/files/{batch['output_file_id']}/content")
        rows = [json.loads(line) for line in content.text.splitlines() if line.strip()]
        if len(rows) != lines:
            raise self.error(f"{label}: the output file has {len(rows)} lines, expected {lines}")
        tokens = sum(int(row["response"]["body"]["usage"]["completion_tokens"]) for row in rows)
        figures = Throughput(label, lines, elapsed, tokens, cpu)
        bench.progress(f"{label}: {elapsed:.2f} s, {tokens} output tokens, {figures.tokens_per_s:,.0f} tokens/s")
        return figures

    async def ttfts(self, setup: Setup, beside: str | None = None) -> tuple[list[float], int]:
        """setup.interactive streaming requests, one after the other; with beside (a batch id), also how many of
        them finished with that batch still running."""
        values: list[float] = []
        overlapped = 0
        for i in range(setup.interactive):
            prompt = setup.prompts[i % len(setup.prompts)]
            body = bench.completion_body(setup.name, prompt, INTERACTIVE_MAX_TOKENS)
            sample = await bench.stream_completion(self.client, self.server.url, body)
            if sample.error is not None or sample.ttft_s is None:
                raise self.error(f"interactive request {i + 1}: {sample.error}")
            values.append(sample.ttft_s)
            if beside is not None and (await self.batch(beside))["status"] not in TERMINAL:
                overlapped += 1
        return values, overlapped


async def bitinglip_part(setup: Setup, results: Results) -> None:
    lines = len(setup.prompts)
    settings = {
        "BITINGLIP_CLUSTER__MODEL": bench.toml_value(setup.name),  # declared: the one deployment
        "BITINGLIP_CLUSTER__LOAD_ON_DEMAND": "true",
        "BITINGLIP_CLUSTER__ENGINE": "@json " + json.dumps(setup.engine_args),
    }
    home = setup.workdir / "bitinglip"
    async with bench.bitinglip_server(home, "bitinglip", settings, register=(setup.model_dir, setup.name)) as server:
        await bench.wait_deployment(server, setup.name, gone=False)
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=30.0)) as client:
            api = Api(client, server, setup.timeout_s)
            bench.progress(f"warming up: {WARMUP_REQUESTS} streaming requests, then a {WARMUP_REQUESTS}-line batch")
            warm = bench.LoadSpec(setup.prompts[:WARMUP_REQUESTS], WARMUP_REQUESTS, INTERACTIVE_MAX_TOKENS)
            samples, _ = await bench.measure_http(server.url, setup.name, warm)
            if errors := [s.error for s in samples if s.error]:
                raise api.error(f"{len(errors)} warm-up requests failed, e.g. {errors[0]}")
            warm_file = await api.upload(batch_lines(setup.name, setup.prompts[:WARMUP_REQUESTS], setup.max_tokens))
            await api.run_batch(warm_file, min(WARMUP_REQUESTS, lines), "warm-up batch")

            file_id = await api.upload(batch_lines(setup.name, setup.prompts, setup.max_tokens))
            results.bitinglip = await api.run_batch(file_id, lines, f"BitingLip batch ({lines} lines)")
            bench.progress(f"interactive TTFT, idle: {setup.interactive} requests")
            results.ttft_idle_s, _ = await api.ttfts(setup)
            bench.progress(f"interactive TTFT beside a {lines}-line batch: {setup.interactive} requests")
            second = await api.until(await api.create(file_id), bench.READY_TIMEOUT_S, running=True)
            if second["request_counts"]["completed"] == 0:  # running, but maybe not yet generating
                await asyncio.sleep(RUNNING_FOR_S)
            results.ttft_beside_s, results.overlapped = await api.ttfts(setup, second["id"])
            if results.overlapped < setup.interactive:
                bench.progress(f"NOTE: the batch ended after {results.overlapped} of the interactive requests")
            if (await api.batch(second["id"]))["status"] not in TERMINAL:
                await api.call("POST", f"/v1/batches/{second['id']}/cancel", ok=(200, 409))  # 409: it just ended
                with contextlib.suppress(BenchError):  # the server is stopped next either way
                    ended = await api.until(await api.batch(second["id"]), 60.0)
                    bench.progress(f"second batch: {ended['status']}, {ended['request_counts']}")


# -- vLLM offline


def offline_worker(spec_path: str) -> None:
    """Runs in the offline subprocess (OFFLINE_CMD): one JSON line of figures, the last line starting with `{`."""
    from vllm import LLM, SamplingParams

    spec = json.loads(Path(spec_path).read_text())
    llm = LLM(model=spec["model"], tokenizer=spec["model"], **spec["engine_args"])
    params = SamplingParams(max_tokens=spec["max_tokens"], ignore_eos=True, temperature=1.0)
    llm.generate(spec["prompts"][:WARMUP_REQUESTS], params, use_tqdm=False)
    cpu_before = cpu_seconds(os.getpid())
    start = time.perf_counter()
    outputs = llm.generate(spec["prompts"], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    cpu = cpu_delta(cpu_before, cpu_seconds(os.getpid()))
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(json.dumps({"elapsed_s": elapsed, "output_tokens": tokens, "lines": len(outputs), "cpu_s": cpu}), flush=True)


def offline_part(setup: Setup, results: Results) -> None:
    workdir, lines = setup.workdir, len(setup.prompts)
    spec = {"model": str(setup.model_dir), "engine_args": setup.engine_args,
            "prompts": setup.prompts, "max_tokens": setup.max_tokens}  # fmt: skip
    spec_path, log_path = workdir / "offline.json", workdir / "offline.log"
    spec_path.write_text(json.dumps(spec))
    limit = bench.READY_TIMEOUT_S + setup.timeout_s
    cmd = [sys.executable, "-c", OFFLINE_CMD, str(Path(__file__).resolve().parent), str(spec_path)]
    with bench.server_process(cmd, bench.child_env({}), log_path) as proc:
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            bench.progress(f"offline: still running after {limit:.0f} s; stopping it")
    output = log_path.read_text(errors="replace").splitlines()
    line = next((text for text in reversed(output) if text.startswith("{")), None)
    if line is None:
        raise BenchError(f"the offline run printed no figures (exit code {proc.returncode})", bench.tail(log_path))
    if proc.returncode != 0:  # the figures were printed: only its shutdown went wrong
        bench.progress(f"offline: WARNING exit code {proc.returncode} after printing its figures")
    figures = json.loads(line)
    if figures["lines"] != lines:
        raise BenchError(f"LLM.generate returned {figures['lines']} outputs for {lines} prompts")
    results.offline = Throughput("vLLM offline LLM.generate", lines, figures["elapsed_s"],
                                 figures["output_tokens"], figures["cpu_s"])  # fmt: skip
    bench.progress(f"offline: {figures['elapsed_s']:.2f} s, {results.offline.tokens_per_s:,.0f} tokens/s")


# -- report


def tok_ratio(results: Results) -> float:
    b, o = results.bitinglip, results.offline
    return b.tokens_per_s / o.tokens_per_s if b and o and o.tokens_per_s else math.nan


def print_report(setup: Setup, results: Results) -> None:
    rows = [r for r in (results.bitinglip, results.offline) if r is not None]
    expected = len(setup.prompts) * setup.max_tokens
    if rows:
        width = max(len(r.label) for r in rows)
        print(f"\n{'':<{width}}  {'elapsed s':>10}  {'output tok/s':>12}  {'req/s':>8}  {'CPU s':>8}")
        for r in rows:
            cpu = f"{r.cpu_s:8.1f}" if r.cpu_s is not None else f"{'n/a':>8}"
            print(f"{r.label:<{width}}  {r.elapsed_s:10.2f}  {r.tokens_per_s:12,.0f}  {r.requests_per_s:8.1f}  {cpu}")
            if r.output_tokens != expected:
                print(f"  !!! {r.output_tokens} output tokens, expected {expected}")
    ratio = tok_ratio(results)
    if math.isfinite(ratio):
        verdict = "PASS" if ratio >= TARGET_RATIO else "BELOW"
        print(f"output tok/s BitingLip / offline: {ratio:.2f}x   (target ≥ {TARGET_RATIO:.2f}x)   {verdict}")
    if results.ttft_idle_s:
        k = setup.interactive
        print(f"\ninteractive TTFT, {k} sequential requests of {INTERACTIVE_MAX_TOKENS} tokens")
        print(f"{'':<16}  {'p50 ms':>8}  {'p90 ms':>8}")
        idle = [bench.percentile_ms(results.ttft_idle_s, q) for q in (50, 90)]
        beside = [bench.percentile_ms(results.ttft_beside_s, q) for q in (50, 90)]
        print(f"{'idle':<16}  {idle[0]:8.1f}  {idle[1]:8.1f}")
        if results.ttft_beside_s:
            print(f"{'beside a batch':<16}  {beside[0]:8.1f}  {beside[1]:8.1f}")
            ratios = [bench.ratio(b, i) for b, i in zip(beside, idle, strict=True)]
            print(f"{'beside / idle':<16}" + "".join(f"  {r + ('x' if r != 'n/a' else ''):>8}" for r in ratios))
            if results.overlapped < k:
                print(f"  note: the batch ended early; {results.overlapped} of the {k} requests ran beside it")


def figures_json(setup: Setup, results: Results, failures: dict[str, str]) -> dict[str, Any]:
    ratio = tok_ratio(results)

    def ttft(values: list[float]) -> dict[str, Any]:
        return {"p50_ms": bench.finite(bench.percentile_ms(values, 50)),
                "p90_ms": bench.finite(bench.percentile_ms(values, 90)), "ms": [v * 1000 for v in values]}  # fmt: skip

    return {
        "setup": {"model": str(setup.model_dir), "name": setup.name, "lines": len(setup.prompts),
                  "max_tokens": setup.max_tokens, "interactive": setup.interactive,
                  "engine_args": setup.engine_args},
        "bitinglip_batch": dataclasses.asdict(results.bitinglip) if results.bitinglip else None,
        "vllm_offline": dataclasses.asdict(results.offline) if results.offline else None,
        "tokens_per_s_ratio": bench.finite(ratio),
        "target_ratio": TARGET_RATIO,
        "passed": ratio >= TARGET_RATIO if math.isfinite(ratio) else None,
        "ttft_idle": ttft(results.ttft_idle_s),
        "ttft_beside_batch": {**ttft(results.ttft_beside_s), "overlapped": results.overlapped},
        "failures": failures,
    }  # fmt: skip


# -- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=bench.REPO / "data/models/tiny", help="model directory")
    parser.add_argument("--name", help="the model's registry and served name (default: the directory's name)")
    parser.add_argument("--lines", type=bench.positive_int, default=1000, help="batch lines, and offline prompts")
    parser.add_argument("--max-tokens", type=bench.positive_int, default=64, help="output tokens per line")
    parser.add_argument("--interactive", type=bench.positive_int, default=20, help="TTFT requests, idle and beside")
    parser.add_argument("--order", choices=ORDERS, default=ORDERS[0], help="which engine runs first")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a batch or LLM.generate may take")
    parser.add_argument("--engine-arg", type=bench.parse_engine_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="override or add a vLLM engine argument for both engines (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    model_dir = bench.model_dir_of(args.model)
    if model_dir is None:
        return 2
    bench.warn_about_machine()
    engine_args = {**bench.SMALL_ENGINE_ARGS, **dict(args.engine_arg)}
    name = args.name or model_dir.name
    prompts = make_prompts(args.lines)
    print(f"model {model_dir} as {name!r}, engine arguments {json.dumps(engine_args)}")
    print(f"N = {args.lines} lines, M = {args.max_tokens} output tokens each (ignore_eos, temperature 1.0), "
          f"K = {args.interactive} interactive requests; {args.order}", flush=True)  # fmt: skip
    results = Results()
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bitinglip-bench-batch-") as workdir:
        setup = Setup(model_dir, name, engine_args, Path(workdir), prompts, args.max_tokens, args.interactive,
                      args.timeout)  # fmt: skip
        parts = [("bitinglip", lambda: asyncio.run(bitinglip_part(setup, results))),
                 ("vllm offline", lambda: offline_part(setup, results))]  # fmt: skip
        for label, part in parts if args.order == ORDERS[0] else parts[::-1]:
            bench.progress(f"=== {label}")
            try:
                part()
            except BenchError as exc:
                bench.failed(failures, label, exc)
    print_report(setup, results)
    for label, reason in failures.items():
        print(f"\n!!! {label}: NOT MEASURED: {reason}")
    if args.json:
        args.json.write_text(json.dumps(figures_json(setup, results, failures), indent=2) + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
