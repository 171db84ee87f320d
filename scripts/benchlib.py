"""What the benchmarks share: the load client, the figures of a run, server processes, BitingLip's settings as
environment variables, and the command line's parsers. Each `scripts/bench_*.py` imports it (scripts/ is on
sys.path when one runs as a script); each keeps only its own benchmark.
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
import signal
import socket
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
import numpy as np

REPO = Path(__file__).resolve().parent.parent
BITINGLIP = str(Path(sys.executable).parent / "bitinglip")  # the CLI of the environment the bench runs in
# The model `make model` builds, where a BitingLip home (BITINGLIP_HOME, else the repository's data/) keeps it.
TINY_MODEL = Path(os.environ.get("BITINGLIP_HOME") or REPO / "data") / "models" / "tiny"
DEFAULT_ENGINE_ARGS: dict[str, Any] = {
    "max_model_len": 2048,
    "enforce_eager": True,
    "dtype": "bfloat16",
    "max_num_seqs": 256,
    # Set explicitly: left unset, vLLM's CPU build takes ~92% of the machine's memory for the KV cache.
    "kv_cache_memory_bytes": 2 * 1024**3,
}
# Smaller, for the benches that start several engines or a batch beside an offline engine (bench_swap, bench_batch).
SMALL_ENGINE_ARGS: dict[str, Any] = {
    "max_model_len": 512,
    "enforce_eager": True,
    "dtype": "bfloat16",
    "max_num_seqs": 64,
    "kv_cache_memory_bytes": 512 * 1024**2,  # set explicitly: vLLM's CPU build would otherwise take most of the RAM
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
STOP_GRACE_S = 30.0
SETTLED_BELOW = 0.25  # the share of all cores busy under which the machine counts as quiet between runs
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


def percentile_ms(values: list[float], q: float) -> float:
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
        ttft_p50_ms=percentile_ms([s.ttft_s for s in ok if s.ttft_s is not None], 50),
        ttft_p99_ms=percentile_ms([s.ttft_s for s in ok if s.ttft_s is not None], 99),
        latency_p50_ms=percentile_ms([s.latency_s for s in ok], 50),
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


def completion_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
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


def http_client(concurrency: int, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    # aiohttp, not httpx: its C parser costs the load a fraction of the CPU, and on 2 cores the client shares the
    # machine with the server it measures (an httpx client at 64 at once kept only 5-20 requests in flight).
    # One connection per concurrent request: a pool smaller than the concurrency would queue requests in the
    # client and hide the server's own queueing from the TTFT figures.
    connector = aiohttp.TCPConnector(limit=concurrency + 8)
    timeout = aiohttp.ClientTimeout(total=600.0, connect=30.0)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)


async def measure_http(base_url: str, model: str, spec: LoadSpec) -> tuple[list[Sample], float]:
    async with http_client(spec.concurrency) as client:

        async def one(_: int, prompt: str) -> Sample:
            return await stream_completion(client, base_url, completion_body(model, prompt, spec.max_tokens))

        return await drive(spec, one)


# -- streaming requests of an API that says in its own events when text starts, how many tokens it made, and its end


@dataclasses.dataclass(frozen=True)
class Api:
    path: str
    body: Callable[[str, str, int], dict[str, Any]]  # (model, prompt, max_tokens) -> the request body
    # One decoded `data:` event -> (it carries text, output tokens it reports or None, the stream is over).
    read: Callable[[dict[str, Any]], tuple[bool, int | None, bool]]


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One user message, streamed; `ignore_eos` (vLLM's extension): every request makes max_tokens."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def chat_read(event: dict[str, Any]) -> tuple[bool, int | None, bool]:
    choices = event.get("choices") or []
    usage = event.get("usage")
    return bool(choices and choices[0].get("delta", {}).get("content")), usage and usage["completion_tokens"], False


CHAT = Api("/v1/chat/completions", chat_body, chat_read)


async def stream_api(client: aiohttp.ClientSession, url: str, api: Api, body: dict[str, Any]) -> Sample:
    """POST one streaming request and time it; every failure becomes Sample.error, nothing is raised."""
    start = time.perf_counter()
    sample = Sample(latency_s=0.0)
    ended = False
    try:
        async with client.post(url + api.path, json=body) as response:
            if response.status != 200:
                text = (await response.read()).decode(errors="replace")
                sample.error = f"HTTP {response.status}: {text[:160]}"
            else:
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[len(b"data:") :].strip()
                    if data == b"[DONE]":
                        ended = True
                        break
                    text, tokens, over = api.read(_decode(data))
                    if text and sample.ttft_s is None:
                        sample.ttft_s = time.perf_counter() - start
                    if tokens is not None:
                        sample.tokens = tokens
                    if over:
                        ended = True
                        break
    except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError, KeyError, BenchError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    sample.latency_s = time.perf_counter() - start
    if sample.error is None and not ended:
        sample.error = "the stream ended before its last event"
    elif sample.error is None and (sample.ttft_s is None or not sample.tokens):
        sample.error = "no text or no usage in the stream"
    return sample


async def measure_api(
    url: str,
    pid: int,
    api: Api,
    models: Sequence[str],
    spec: LoadSpec,
    label: str,
    *,
    headers: dict[str, str] | None = None,
) -> Figures:
    """One run of ``spec`` on ``api``, request i naming models[i % len(models)]; with the CPU time the process
    ``pid`` (the server's API process, not its engine) spent over the run. ``headers``: sent with every request
    (an API key)."""
    before = process_cpu_s(pid)
    async with http_client(spec.concurrency, headers) as client:

        async def one(index: int, prompt: str) -> Sample:
            model = models[index % len(models)]
            return await stream_api(client, url, api, api.body(model, prompt, spec.max_tokens))

        figures = summarize(label, *await drive(spec, one))
    figures.concurrency = spec.concurrency
    figures.api_cpu_s = process_cpu_s(pid) - before
    tokens = figures.tokens_per_s * figures.wall_s
    figures.api_cpu_per_1k_tokens = figures.api_cpu_s * 1000 / tokens if tokens else None
    return figures


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
    pgid = proc.pid  # start_new_session made the server the leader of its own session and group
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
        # A session of its own, as a user's server started from another terminal: Linux's autogroup then schedules
        # it apart from this client, as it does a user's. Rounds 3-5x apart here were once hidden by keeping both in
        # one session; their cause was the engine's busy-wait (src/bitinglip/cluster/vllm/spin.py).
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, not its children), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """Busy and total CPU time of the whole machine so far (clock ticks, all cores), from /proc/stat."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle and iowait are not busy


async def settle(quiet_below: float = SETTLED_BELOW, window_s: float = 0.25, at_most_s: float = 10.0) -> float:
    """Wait until the machine is quiet for one window (under ``quiet_below`` of all its cores busy), so what the
    last run left running (a `vllm serve` engine core spins for a second after its last message, a server's
    aborted requests finish) does not fall on the next target's run. Returns the seconds waited (at most about
    ``at_most_s``: a machine that never settles is measured anyway, and the caller says so)."""
    start = time.monotonic()
    busy, total = machine_busy()
    while time.monotonic() - start < at_most_s:
        await asyncio.sleep(window_s)
        now_busy, now_total = machine_busy()
        share = (now_busy - busy) / max(now_total - total, 1)
        if share < quiet_below:
            break
        busy, total = now_busy, now_total
    return time.monotonic() - start


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


# -- BitingLip servers


def bitinglip_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A BitingLip server's environment: its own home (database, models) in ``home``, the chat model alone, then
    ``extra``; the user's own BITINGLIP_* variables dropped (child_env)."""
    return child_env(
        {
            "BITINGLIP_ENV": "production",
            "BITINGLIP_CLUSTER__EMBEDDING_MODEL": "",  # the chat model alone, like for like
            "BITINGLIP_HOME": str(home),
            "BITINGLIP_DB__URL": f"sqlite+aiosqlite:///{home}/bench.db",
            "BITINGLIP_MODELS__DIR": str(home / "models"),
            **extra,
        }
    )


def engine_settings(engine_args: dict[str, Any]) -> dict[str, str]:
    """vLLM engine arguments as BitingLip's settings (BITINGLIP_CLUSTER__ENGINE__<KEY> variables)."""
    return {f"BITINGLIP_CLUSTER__ENGINE__{k.upper()}": toml_value(v) for k, v in engine_args.items()}


def bitinglip_cli(home: Path, settings: dict[str, str], *args: str) -> str:
    """Run `bitinglip ARGS` on the home a server started with ``home`` and ``settings`` would have; its output.
    BenchError with that output when it fails."""
    home.mkdir(parents=True, exist_ok=True)
    env = bitinglip_env(home, settings)
    try:
        done = subprocess.run([BITINGLIP, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`bitinglip {' '.join(args[:2])}` did not finish in {exc.timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"`bitinglip {' '.join(args[:2])}` failed", done.stdout + done.stderr)
    return done.stdout


@dataclasses.dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@contextlib.asynccontextmanager
async def bitinglip_server(
    home: Path,
    label: str,
    settings: dict[str, str],
    *,
    serve_args: Sequence[str] = (),
    register: tuple[Path, str] | None = None,
) -> AsyncIterator[Server]:
    """`bitinglip serve` on a free port with its home in ``home`` (made if missing) and ``settings`` (BITINGLIP_*
    variables), until /ready; ``register``: a model directory and the name it is first imported under."""
    home.mkdir(parents=True, exist_ok=True)
    env = bitinglip_env(home, settings)
    if register is not None:
        model_dir, name = register
        bitinglip_cli(home, settings, "models", "import", str(model_dir), "--name", name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "server.log"

    async def ready(client: httpx.AsyncClient) -> bool:
        return (await client.get(f"{url}/ready")).status_code == 200

    cmd = [BITINGLIP, "serve", "--host", "127.0.0.1", "--port", str(port), *serve_args]
    with server_process(cmd, env, log_path) as proc:
        progress(f"{label}: ready after {await wait_ready(proc, log_path, ready):.1f} s")
        yield Server(url, proc, log_path)


async def wait_deployment(server: Server, name: str, *, gone: bool) -> None:
    """Until GET /api/deployments/{name} says ready (gone=False) or 404 (gone=True)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=10.0) as client:
        while time.monotonic() < deadline:
            r = await client.get(f"{server.url}/api/deployments/{name}")
            if gone and r.status_code == 404:
                return
            if not gone and r.status_code == 200 and r.json()["state"] in ("ready", "failed"):
                if r.json()["state"] == "failed":
                    raise BenchError(f"deployment {name} failed: {r.json()['reason']}", tail(server.log_path))
                return
            await asyncio.sleep(0.2)
    raise BenchError(f"deployment {name} not {'gone' if gone else 'ready'} after {READY_TIMEOUT_S:.0f} s")


@contextlib.asynccontextmanager
async def vllm_server(
    model_dir: Path,
    served_name: str,
    engine_args: dict[str, Any],
    workdir: Path,
    *,
    extra_flags: Sequence[str] = (),
    label: str = "vllm",
) -> AsyncIterator[Server]:
    """`vllm serve` (vLLM's own OpenAI server) on a free port with these engine arguments and ``extra_flags``
    (server options such as `--lora-modules`), until it serves the model under ``served_name``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", VLLM_SERVER_MODULE, "--host", "127.0.0.1", "--port", str(port),
        "--model", str(model_dir), "--served-model-name", served_name, *vllm_flags(engine_args), *extra_flags,
    ]  # fmt: skip
    log_path = workdir / f"{label}.log"

    async def ready(client: httpx.AsyncClient) -> bool:
        healthy = (await client.get(f"{url}/health")).status_code == 200
        return healthy and served_name in await served_models(client, url)

    with server_process(cmd, child_env(IDLE_QUIET), log_path) as proc:
        progress(f"{label}: ready after {await wait_ready(proc, log_path, ready):.1f} s")
        yield Server(url, proc, log_path)


# -- report


def median_of(runs: list[Figures], field: str) -> float:
    """The median of one figure over runs, leaving out the runs that have none."""
    values = [v for f in runs if (v := getattr(f, field)) is not None and math.isfinite(v)]
    return float(statistics.median(values)) if values else math.nan


def json_safe(figures: dict[str, Any]) -> dict[str, Any]:
    """NaN (no successful request to take a percentile of) as null: NaN is not JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in figures.items()}


def finite(value: float) -> float | None:
    """NaN (nothing measured) as null: NaN is not JSON."""
    return value if math.isfinite(value) else None


def ratio(top: float, bottom: float) -> str:
    return f"{top / bottom:.2f}" if bottom and math.isfinite(top / bottom) else "n/a"


def failed(failures: dict[str, str], label: str, exc: BenchError) -> None:
    """Reported at once with the server's output, and again at the end: the other parts still run."""
    progress(f"{label}: FAILED: {exc.message}" + (f"; its output:\n{exc.output}" if exc.output else ""))
    failures[label] = exc.summary()


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


def model_dir_of(path: Path) -> Path | None:
    """The model directory a bench was given, resolved; None (and a message) when there is no model there."""
    model_dir = path.resolve()
    if not (model_dir / "config.json").is_file():
        print(f"bench: no model at {model_dir} (make model builds the default one)", file=sys.stderr)
        return None
    return model_dir


def warn_about_machine() -> None:
    # Dropped here for the in-process engine; child_env drops it for the servers.
    if os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None) is not None:
        progress("ignoring VLLM_CPU_KVCACHE_SPACE: the KV cache is sized by the engine arguments")
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.5 * cores:
        progress(f"WARNING: load average {load:.1f} on {cores} cores before starting; the figures will be noisy")
