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
Figures are medians over the rounds.

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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
import numpy as np
import uvloop

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("bitinglip", "bitinglip-1", "vllm", "engine")
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "max_model_len": 2048,
    "enforce_eager": True,
    "dtype": "bfloat16",
    "max_num_seqs": 256,
    # Set explicitly: left unset, vLLM's CPU build takes ~92% of the machine's memory for the KV cache.
    "kv_cache_memory_bytes": 2 * 1024**3,
}
# A fixed text the prompts are cut from (repeated as needed), so every target sees exactly the same prompts.
FILLER = (
    "The quick brown fox jumps over the lazy dog while the server streams tokens back to many clients at once. "
    "Each request waits its turn in the scheduler, shares the batch with its neighbours, and leaves when done."
)
READY_TIMEOUT_S = 300.0
# Every engine's OpenMP threads sleep when idle instead of spinning (libgomp's default spins after each step):
# with all targets up on 2 cores, a spinning idle engine would slow the one measured.
IDLE_QUIET = {"OMP_WAIT_POLICY": "PASSIVE"}
CONCURRENCIES = (1, 16, 64, 256)
STOP_GRACE_S = 30.0
WARMUP_REQUESTS = 8
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# `vllm serve` flags that keep its per-request logging off; each is used only where this vLLM has it.
VLLM_QUIET_FLAGS: dict[str, list[str]] = {
    "disable_log_requests": ["--disable-log-requests"],
    "uvicorn_log_level": ["--uvicorn-log-level", "warning"],
    "disable_uvicorn_access_log": ["--disable-uvicorn-access-log"],
}

_T0 = time.monotonic()
# The environment this script was started with, before it quiets its own vLLM logging: the servers get this.
_INHERITED_ENV = dict(os.environ)


class BenchError(Exception):
    """A target could not be measured (did not start, wrong arguments); the others still run."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.output = output  # the tail of the server's output, when there is a server

    def summary(self) -> str:
        """The message and the output's last line, which is where a server usually says why it stopped."""
        last = next((line for line in reversed(self.output.splitlines()) if line.strip()), "")
        return f"{self.message}; its last output: {last}" if last else self.message


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- what one request and one run produce


@dataclasses.dataclass
class Sample:
    latency_s: float
    ttft_s: float | None = None
    tokens: int = 0
    prompt_tokens: int | None = None
    error: str | None = None
    # True when the stream carried no usage and the tokens were counted from its chunks instead.
    counted_chunks: bool = False


@dataclasses.dataclass
class LoadSpec:
    prompts: list[str]
    concurrency: int
    max_tokens: int


@dataclasses.dataclass
class Figures:
    target: str
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    latency_p50_ms: float
    prompt_tokens_mean: float
    usage_missing: int
    error_examples: list[str]
    concurrency: int = 0
    api_cpu_s: float | None = None  # the server's API process over the run (None: no separate process)
    api_cpu_per_1k_tokens: float | None = None


def _percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def summarize(target: str, samples: list[Sample], wall_s: float) -> Figures:
    ok = [s for s in samples if s.error is None]
    prompt_tokens = [s.prompt_tokens for s in ok if s.prompt_tokens is not None]
    return Figures(
        target=target,
        requests=len(samples),
        errors=len(samples) - len(ok),
        wall_s=wall_s,
        requests_per_s=len(ok) / wall_s,
        tokens_per_s=sum(s.tokens for s in ok) / wall_s,
        ttft_p50_ms=_percentile_ms([s.ttft_s for s in ok if s.ttft_s is not None], 50),
        ttft_p99_ms=_percentile_ms([s.ttft_s for s in ok if s.ttft_s is not None], 99),
        latency_p50_ms=_percentile_ms([s.latency_s for s in ok], 50),
        prompt_tokens_mean=statistics.fmean(prompt_tokens) if prompt_tokens else float("nan"),
        usage_missing=sum(s.counted_chunks for s in ok),
        error_examples=sorted({s.error for s in samples if s.error})[:5],
    )


def checked(sample: Sample, max_tokens: int) -> Sample:
    """With ignore_eos every request must yield exactly max_tokens; anything else is not the same work."""
    if sample.error is None and sample.ttft_s is None:
        sample.error = "no token arrived"
    elif sample.error is None and sample.tokens != max_tokens:
        sample.error = f"generated {sample.tokens} tokens, expected {max_tokens}"
    return sample


async def drive(spec: LoadSpec, one: Callable[[int, str], Awaitable[Sample]]) -> tuple[list[Sample], float]:
    """Run one() on every prompt, at most spec.concurrency at once; returns the samples and the wall time."""
    gate = asyncio.Semaphore(spec.concurrency)

    async def gated(index: int, prompt: str) -> Sample:
        async with gate:
            return await one(index, prompt)

    start = time.perf_counter()
    samples = await asyncio.gather(*(gated(i, p) for i, p in enumerate(spec.prompts)))
    return list(samples), time.perf_counter() - start


def make_prompts(model_dir: Path, count: int, prompt_tokens: int) -> list[str]:
    """`Request {i}: ` plus the same stretch of FILLER, cut to about prompt_tokens tokens of this model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # Every word costs at least one token, so prompt_tokens words are always enough.
    words = list(itertools.islice(itertools.cycle(FILLER.split()), prompt_tokens))

    def length(taken: int) -> int:
        return len(tokenizer.encode(f"Request {count}: " + " ".join(words[:taken])))

    # The longest word prefix that stays within the budget, found once; only the request number varies.
    taken = 1
    while taken < len(words) and length(taken + 1) <= prompt_tokens:
        taken += 1
    body = " ".join(words[:taken])
    return [f"Request {i}: {body}" for i in range(count)]


# -- HTTP targets


def _completion_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,  # a vLLM extension: every request generates exactly max_tokens
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


_decode = msgspec.json.Decoder().decode  # the client parses every event of every stream: as cheaply as it can


class _Events:
    """What one stream's `data:` lines say: the first text's time, usage, an error event, the end."""

    def __init__(self, start: float, sample: Sample) -> None:
        self.start, self.sample = start, sample
        self.usage: dict[str, Any] | None = None
        self.chunks_with_text = 0
        self.done = False

    def take(self, line: bytes) -> bool:
        """Read one line; True when the stream is over (`[DONE]` or an error event)."""
        if not line.startswith(b"data:"):
            return False
        data = line[len(b"data:") :].strip()
        if data == b"[DONE]":
            self.done = True
            return True
        event = _decode(data)
        if "error" in event:
            self.sample.error = f"error event: {json.dumps(event['error'])[:160]}"
            return True
        choices = event.get("choices") or []
        if choices and choices[0].get("text"):
            self.chunks_with_text += 1
            if self.sample.ttft_s is None:
                self.sample.ttft_s = time.perf_counter() - self.start
        self.usage = event.get("usage") or self.usage
        return False


async def stream_completion(
    client: aiohttp.ClientSession | httpx.AsyncClient, base_url: str, body: dict[str, Any]
) -> Sample:
    """POST one streaming completion and time it; every failure becomes Sample.error, nothing is raised."""
    start = time.perf_counter()
    sample = Sample(latency_s=0.0)
    events = _Events(start, sample)
    url = f"{base_url}/v1/completions"
    try:
        if isinstance(client, httpx.AsyncClient):
            async with client.stream("POST", url, json=body) as reply:
                if reply.status_code != 200:
                    text = (await reply.aread()).decode(errors="replace")
                    sample.error = f"HTTP {reply.status_code}: {text[:160]}"
                else:
                    async for text_line in reply.aiter_lines():
                        if events.take(text_line.encode()):
                            break
        else:
            async with client.post(url, json=body) as response:
                if response.status != 200:
                    text = (await response.read()).decode(errors="replace")
                    sample.error = f"HTTP {response.status}: {text[:160]}"
                else:
                    async for line in response.content:  # line by line
                        if events.take(line):
                            break
    except (httpx.HTTPError, aiohttp.ClientError, TimeoutError, json.JSONDecodeError, msgspec.DecodeError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    sample.latency_s = time.perf_counter() - start
    if sample.error is None and not events.done:
        sample.error = "stream ended without data: [DONE]"
    if events.usage is not None:
        sample.tokens = int(events.usage.get("completion_tokens", 0))
        sample.prompt_tokens = events.usage.get("prompt_tokens")
    else:
        sample.tokens, sample.counted_chunks = events.chunks_with_text, True
    return checked(sample, body["max_tokens"])


def http_client(concurrency: int) -> aiohttp.ClientSession:
    # aiohttp, not httpx: its C parser costs the load a fraction of the CPU, and on 2 cores the client shares the
    # machine with the server it measures (an httpx client at 64 at once kept only 5-20 requests in flight).
    # One connection per concurrent request: a pool smaller than the concurrency would queue requests in the
    # client and hide the server's own queueing from the TTFT figures.
    connector = aiohttp.TCPConnector(limit=concurrency + 8)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600.0, connect=30.0))


async def measure_http(base_url: str, model: str, spec: LoadSpec) -> tuple[list[Sample], float]:
    async with http_client(spec.concurrency) as client:

        async def one(_: int, prompt: str) -> Sample:
            return await stream_completion(client, base_url, _completion_body(model, prompt, spec.max_tokens))

        return await drive(spec, one)


# -- server processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group; orphaned zombies may linger in containers."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's whole process group (its engine core is a child), SIGKILL what is left after grace_s."""
    pgid = proc.pid  # process_group=0 made the server the leader of its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it does not count as alive
        if not _group_alive(pgid):
            proc.wait()  # at most a zombie by now: returns at once with its exit code
            return
        time.sleep(0.2)
    progress(f"process group {pgid} still alive {grace_s:.0f} s after SIGTERM: SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def server_process(cmd: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    progress(f"starting: {' '.join(cmd)}")
    with log_path.open("wb") as log:
        # A process group, not a session: Linux's autogroup schedules each session as one CPU group, and a load
        # client in another group than the servers was kept off the CPU for over a second after a burst
        # (/proc/self/schedstat: 1.4 s runnable, not run), which made rounds 3-5x apart.
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    try:
        yield proc
    finally:
        stop_group(proc)
        progress(f"stopped (exit code {proc.returncode})")


async def wait_ready(
    proc: subprocess.Popen[bytes], log_path: Path, probe: Callable[[httpx.AsyncClient], Awaitable[bool]]
) -> float:
    """Poll probe() until it says ready; fail at once if the server exits, or after READY_TIMEOUT_S."""
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.monotonic() - start < READY_TIMEOUT_S:
            if proc.poll() is not None:
                raise BenchError(f"the server exited with code {proc.returncode} before ready", tail(log_path))
            with contextlib.suppress(httpx.HTTPError):
                if await probe(client):
                    return time.monotonic() - start
            await asyncio.sleep(0.5)
    raise BenchError(f"the server was not ready after {READY_TIMEOUT_S:.0f} s", tail(log_path))


async def served_models(client: httpx.AsyncClient, base_url: str) -> list[str]:
    response = await client.get(f"{base_url}/v1/models")
    return [card["id"] for card in response.json()["data"]] if response.status_code == 200 else []


def toml_value(value: Any) -> str:
    """A Python value written the way BitingLip's settings parse BITINGLIP_* variables (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise BenchError(f"cannot write {value!r} as a TOML value")


def child_env(extra: dict[str, str]) -> dict[str, str]:
    # The user's own BITINGLIP_* variables would change only one of the targets: the run defines them all.
    # VLLM_CPU_KVCACHE_SPACE overrides kv_cache_memory_bytes inside vLLM's CPU platform, behind the engine
    # arguments' back.
    env = {k: v for k, v in _INHERITED_ENV.items() if not k.startswith("BITINGLIP_") and k != "VLLM_CPU_KVCACHE_SPACE"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


# -- the three targets


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, not its children), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    progress(f"{name}: {label}: {len(spec.prompts)} requests, {concurrency} at once")
    before = cpu_seconds(target.pid) if target.pid is not None else None
    figures = summarize(name, *await target.run(spec))
    figures.concurrency = concurrency
    if before is not None and target.pid is not None:
        figures.api_cpu_s = cpu_seconds(target.pid) - before
        tokens = figures.tokens_per_s * figures.wall_s
        figures.api_cpu_per_1k_tokens = figures.api_cpu_s * 1000 / tokens if tokens else None
    errors = f", {figures.errors} ERRORS" if figures.errors else ""
    rates = f"{figures.tokens_per_s:,.0f} tokens/s, TTFT p50 {figures.ttft_p50_ms:.0f} ms"
    cpu = f", API CPU {figures.api_cpu_per_1k_tokens:.3f} s/1k tokens" if figures.api_cpu_per_1k_tokens else ""
    progress(f"{name}: {figures.wall_s:.2f} s, {rates}{cpu}{errors}")
    return figures


@contextlib.asynccontextmanager
async def bench_bitinglip(ctx: Context, name: str = "bitinglip", **settings: str) -> AsyncIterator[Target]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    home = ctx.workdir / name
    home.mkdir(exist_ok=True)
    env = child_env(
        {
            "BITINGLIP_ENV": "production",
            "BITINGLIP_CLUSTER__EMBEDDING_MODEL": "",  # the chat model alone, like for like
            "BITINGLIP_HOME": str(home),
            "BITINGLIP_DB__URL": f"sqlite+aiosqlite:///{home}/bench.db",
            "BITINGLIP_MODELS__DIR": str(home / "models"),
            **settings,
            **IDLE_QUIET,
            **{f"BITINGLIP_CLUSTER__ENGINE__{k.upper()}": toml_value(v) for k, v in ctx.engine_args.items()},
        }
    )
    executable = str(Path(sys.executable).parent / "bitinglip")
    cmd = [executable, "serve", "--host", "127.0.0.1", "--port", str(port), "--model", str(ctx.model_dir)]
    log_path = ctx.workdir / f"{name}.log"

    async def ready(client: httpx.AsyncClient) -> bool:
        return (await client.get(f"{base_url}/ready")).status_code == 200

    with server_process(cmd, env, log_path) as proc:
        progress(f"{name}: ready after {await wait_ready(proc, log_path, ready):.1f} s")
        async with httpx.AsyncClient() as client:
            names = await served_models(client, base_url)
        if not names:
            raise BenchError("bitinglip is ready but /v1/models lists no model", tail(log_path))
        ctx.served_name = names[0]
        yield Target(lambda spec: measure_http(base_url, ctx.served_name, spec), proc.pid)


def vllm_flags(engine_args: dict[str, Any]) -> list[str]:
    """The engine arguments as `vllm serve` flags, read from vLLM's own parser rather than guessed."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    actions = {action.dest: action for action in make_arg_parser(FlexibleArgumentParser())._actions}
    flags: list[str] = []
    for key, value in engine_args.items():
        action = actions.get(key)
        if action is None:
            raise BenchError(f"engine argument `{key}` has no `vllm serve` flag in this vLLM")
        flag = next(o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-"))
        if isinstance(value, bool):
            negative = f"--no-{flag[2:]}"
            # False on a store_true flag is its default: leaving the flag out says the same.
            flags += [flag] if value else [negative] if negative in action.option_strings else []
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            flags += [flag, *map(str, value)]
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    for dest, quiet in VLLM_QUIET_FLAGS.items():
        if dest in actions:
            flags += quiet
    return flags


@contextlib.asynccontextmanager
async def bench_vllm(ctx: Context) -> AsyncIterator[Target]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", VLLM_SERVER_MODULE, "--host", "127.0.0.1", "--port", str(port),
        "--model", str(ctx.model_dir), "--served-model-name", ctx.served_name, *vllm_flags(ctx.engine_args),
    ]  # fmt: skip
    log_path = ctx.workdir / "vllm.log"

    async def ready(client: httpx.AsyncClient) -> bool:
        healthy = (await client.get(f"{base_url}/health")).status_code == 200
        return healthy and ctx.served_name in await served_models(client, base_url)

    with server_process(cmd, child_env(IDLE_QUIET), log_path) as proc:
        progress(f"vllm: ready after {await wait_ready(proc, log_path, ready):.1f} s")
        yield Target(lambda spec: measure_http(base_url, ctx.served_name, spec), proc.pid)


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
                if new and sample.ttft_s is None:
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


def median_of(runs: list[Figures], field: str) -> float:
    values = [v for f in runs if (v := getattr(f, field)) is not None and math.isfinite(v)]
    return float(statistics.median(values)) if values else math.nan


ROWS: list[tuple[str, str, str]] = [
    ("generated tokens/s", "tokens_per_s", "{:,.0f}"),
    ("TTFT p50 ms", "ttft_p50_ms", "{:.1f}"),
    ("TTFT p99 ms", "ttft_p99_ms", "{:.1f}"),
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
        spread = []
        for name in names:
            values = [f.tokens_per_s for f in runs[name] if math.isfinite(f.tokens_per_s)]
            spread.append(f"{min(values):,.0f}-{max(values):,.0f}" if values else "-")
        print(f"{'  tokens/s, rounds':<{label_width}}" + "".join(f"{cell:>12}" for cell in spread))
        for who in ("bitinglip", "bitinglip-1"):
            if who in runs and "vllm" in runs:
                ratios = ", ".join(f"{label} {ratio_of(runs, who, 'vllm', field)}" for label, field in RATIOS)
                print(f"{who} / vllm serve: {ratios}")
        if "bitinglip" in runs and "engine" in runs:
            print(f"bitinglip / engine: tokens/s {ratio_of(runs, 'bitinglip', 'engine', 'tokens_per_s')}")


def json_safe(figures: dict[str, Any]) -> dict[str, Any]:
    """NaN (no successful request to take a percentile of) as null: NaN is not JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in figures.items()}


def print_problems(all_runs: dict[str, list[Figures]], failures: dict[str, str]) -> None:
    """Errors go last and loud: figures from a run with failed requests are not comparable."""
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


def parse_engine_arg(text: str) -> tuple[str, Any]:
    """KEY=VALUE with the value read as TOML (2048, true, "auto"); a bare word stays a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().replace("-", "_").lower(), value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


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


def warn_about_machine() -> None:
    # Dropped here for the in-process engine; child_env drops it for the servers.
    if os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None) is not None:
        progress("ignoring VLLM_CPU_KVCACHE_SPACE: the KV cache is sized by the engine arguments")
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.5 * cores:
        progress(f"WARNING: load average {load:.1f} on {cores} cores before starting; the figures will be noisy")


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
    model_dir = args.model.resolve()
    if not (model_dir / "config.json").is_file():
        print(f"bench: no model at {model_dir} (make model builds the default one)", file=sys.stderr)
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
