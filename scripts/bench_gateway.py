"""Gateway overhead: what API-key auth, per-key limits and usage accounting add to one request.

Two `bitinglip serve` processes run at the same time on this machine, same model, same engine arguments, each
with its own home (a temporary directory) and port:

- off: gateway.auth = false. Usage accounting (it cannot be turned off), metrics and the access log still run.
- on:  gateway.auth = true and a key made beforehand with `bitinglip keys create`, with rpm, tpm and
       max-concurrent limits far above this load: never reached, but looked up, checked, reserved and settled
       on every request, and the x-ratelimit-* headers written on every response.

The access log is on in both (one line per request), as a user would run the server.

Load: one request at a time, so the engine is never contended, alternating between the two servers request by
request in ABBA order (off on, on off, off on, ...), so a drift of the machine, and whatever a server still does
after it has answered, falls on both alike. Two probes, each --warmup requests per server first (not counted),
then --requests measured per server, every request on a kept-alive connection (one httpx.Client per server),
timed with time.perf_counter around the whole call:

- POST /v1/completions, prompt "Hi", max_tokens 1, not streamed: the whole path, engine included;
- GET /v1/models: no engine work, so mostly the gateway's own share.

Reading the output: per probe the p50 and p90 latency of each server and their difference (on - off), and the
median of the paired differences (on_i - off_i of the i-th pair, with a distribution-free 95% interval), which
is more robust than the difference of two medians. The target is a difference under 0.5 ms at p50; LiteLLM
publishes 2-4 ms of proxy overhead. Differences of a few hundredths of a millisecond are within the noise.

    .venv/bin/python scripts/bench_gateway.py [--requests 400] [--warmup 20] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_serve as bench  # scripts/ is on sys.path when this runs as a script
import httpx
import numpy as np
from bench_serve import BenchError

ENGINE_ARGS: dict[str, Any] = {
    **bench.DEFAULT_ENGINE_ARGS,
    "max_model_len": 512,
    "max_num_seqs": 8,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 256 * 1024**2,  # small, so two engines fit side by side
}
# Far above anything this load reaches: the limits are checked on every request but never refuse one.
KEY_LIMITS = {"rpm": 1_000_000, "tpm": 1_000_000_000, "max-concurrent": 10_000}
KEY_TIMEOUT_S = 300.0  # the CLI imports the whole app; slow on a busy 2-core machine
TARGET_MS = 0.5
PEER = "LiteLLM proxy: 2–4 ms (published)"
DEFAULT_MODEL = Path(os.environ.get("BITINGLIP_HOME") or bench.REPO / "data") / "models" / "tiny"


@dataclasses.dataclass
class Server:
    name: str  # "off" or "on"
    port: int
    env: dict[str, str]
    log_path: Path
    key: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclasses.dataclass
class Probe:
    label: str
    method: str
    path: str
    body: dict[str, Any] | None


@dataclasses.dataclass
class ProbeFigures:
    probe: str
    pairs: int
    errors: int
    off_p50_ms: float
    on_p50_ms: float
    diff_p50_ms: float
    off_p90_ms: float
    on_p90_ms: float
    diff_p90_ms: float
    paired_median_ms: float
    paired_ci95_low_ms: float
    paired_ci95_high_ms: float
    error_examples: list[str]
    off_ms: list[float]
    on_ms: list[float]


# -- servers


def make_server(name: str, root: Path, model_dir: Path, port: int, auth: bool) -> Server:
    home = root / name
    home.mkdir()
    env = bench.child_env(
        {
            "BITINGLIP_ENV": "production",
            "BITINGLIP_HOME": str(home),
            "BITINGLIP_DB__URL": f"sqlite+aiosqlite:///{home}/bitinglip.db",
            "BITINGLIP_MODELS__DIR": str(home / "models"),
            "BITINGLIP_CLUSTER__MODEL": str(model_dir),
            "BITINGLIP_CLUSTER__ENGINE": "@json " + json.dumps(ENGINE_ARGS),
            "BITINGLIP_CLUSTER__KV_CACHE_GIB": "0.25",
            "BITINGLIP_SERVER__ACCESS_LOG": "true",  # the same for both, and as a user runs it
            "BITINGLIP_GATEWAY__AUTH": "true" if auth else "false",
        }
    )
    return Server(name, port, env, home / "server.log")


def bitinglip() -> str:
    return str(Path(sys.executable).parent / "bitinglip")


def create_key(server: Server) -> str:
    """`bitinglip keys create --json` on the server's own database, before the server starts."""
    limits = [arg for name, value in KEY_LIMITS.items() for arg in (f"--{name}", str(value))]
    cmd = [bitinglip(), "keys", "create", "--name", "bench", *limits, "--json"]
    try:
        out = subprocess.run(cmd, env=server.env, cwd=bench.REPO, capture_output=True, text=True, timeout=KEY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`bitinglip keys create` did not finish in {KEY_TIMEOUT_S:.0f} s") from None
    if out.returncode != 0:
        raise BenchError(f"`bitinglip keys create` failed with exit code {out.returncode}", out.stdout + out.stderr)
    try:
        key = json.loads(out.stdout)["key"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise BenchError("`bitinglip keys create --json` printed no key", out.stdout + out.stderr) from None
    return str(key)


async def wait_all_ready(servers: list[Server]) -> None:
    """Both servers start at once; the first that exits or times out fails the run, naming itself."""

    async def one(server: Server) -> None:
        async def ready(client: httpx.AsyncClient) -> bool:
            return (await client.get(f"{server.url}/ready")).status_code == 200

        assert server.proc is not None
        try:
            took = await bench.wait_ready(server.proc, server.log_path, ready)
        except BenchError as exc:
            raise BenchError(f"the {server.name!r} server did not start: {exc.message}", exc.output) from None
        bench.progress(f"{server.name}: ready after {took:.1f} s")

    await asyncio.gather(*(one(s) for s in servers))


def open_client(server: Server) -> httpx.Client:
    headers = {"Authorization": f"Bearer {server.key}"} if server.key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=httpx.Timeout(120.0, connect=30.0))


def served_name(server: Server, client: httpx.Client) -> str:
    response = client.get("/v1/models")
    names = [card["id"] for card in response.json().get("data", [])] if response.status_code == 200 else []
    if not names:
        raise BenchError(
            f"the {server.name!r} server is ready but GET /v1/models answered {response.status_code} "
            f"with no model: {response.text[:160]}",
            bench.tail(server.log_path),
        )
    return str(names[0])


# -- load


def timed(client: httpx.Client, probe: Probe) -> tuple[float, str | None]:
    """One request's wall-clock seconds, and an error unless it answered 200."""
    start = time.perf_counter()
    try:
        response = client.request(probe.method, probe.path, json=probe.body)
    except httpx.HTTPError as exc:
        return time.perf_counter() - start, f"{type(exc).__name__}: {exc}"[:200]
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        return elapsed, f"HTTP {response.status_code}: {response.text[:160]}"
    return elapsed, None


def run_probe(pair: list[tuple[Server, httpx.Client]], probe: Probe, warmup: int, requests: int) -> ProbeFigures:
    """warmup + requests rounds, one request per server each, in ABBA order; a pair with an error is dropped."""
    off_s: list[float] = []
    on_s: list[float] = []
    errors: list[str] = []
    bench.progress(f"{probe.label}: {warmup} warm-up, then {requests} measured requests per server")
    for index in range(warmup + requests):
        order = pair if index % 2 == 0 else pair[::-1]
        took: dict[str, float] = {}
        failed = False
        for server, client in order:
            seconds, error = timed(client, probe)
            if error is not None:
                assert server.proc is not None
                if server.proc.poll() is not None:
                    raise BenchError(
                        f"the {server.name!r} server exited with code {server.proc.returncode} during the run",
                        bench.tail(server.log_path),
                    )
                errors.append(f"{server.name}: {error}")
                failed = True
            took[server.name] = seconds
        if index < warmup or failed:
            continue
        off_s.append(took["off"])
        on_s.append(took["on"])
        if len(off_s) % 100 == 0:
            bench.progress(f"{probe.label}: {len(off_s)}/{requests} pairs")
    return summarize(probe.label, off_s, on_s, errors)


# -- figures


def pct_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else math.nan


def median_ci95(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95% interval for the median: order statistics of the sign test (normal approximation)."""
    ordered = sorted(values)
    n = len(ordered)
    k = math.floor((n - 1.96 * math.sqrt(n)) / 2)
    if n == 0 or k < 0:
        return math.nan, math.nan
    return ordered[k], ordered[n - 1 - k]


def summarize(label: str, off_s: list[float], on_s: list[float], errors: list[str]) -> ProbeFigures:
    paired = [(on - off) * 1000 for off, on in zip(off_s, on_s, strict=True)]
    low, high = median_ci95(paired)
    off_p50, on_p50, off_p90, on_p90 = pct_ms(off_s, 50), pct_ms(on_s, 50), pct_ms(off_s, 90), pct_ms(on_s, 90)
    return ProbeFigures(
        probe=label,
        pairs=len(paired),
        errors=len(errors),
        off_p50_ms=off_p50,
        on_p50_ms=on_p50,
        diff_p50_ms=on_p50 - off_p50,
        off_p90_ms=off_p90,
        on_p90_ms=on_p90,
        diff_p90_ms=on_p90 - off_p90,
        paired_median_ms=float(np.median(paired)) if paired else math.nan,
        paired_ci95_low_ms=low,
        paired_ci95_high_ms=high,
        error_examples=sorted(set(errors))[:5],
        off_ms=[s * 1000 for s in off_s],
        on_ms=[s * 1000 for s in on_s],
    )


def print_report(results: list[ProbeFigures], requests: int, warmup: int) -> None:
    print("\nGateway overhead: auth + per-key limits (on) vs auth off; usage accounting runs in both. Times in ms.")
    header = ["probe", "off p50", "on p50", "diff p50", "off p90", "on p90", "diff p90", "paired diff (95% CI)"]
    width = max(len(f.probe) for f in results) + 2
    print(f"{header[0]:<{width}}" + "".join(f"{h:>10}" for h in header[1:7]) + f"  {header[7]:<26}target")
    for f in results:
        cells = [f.off_p50_ms, f.on_p50_ms, f.diff_p50_ms, f.off_p90_ms, f.on_p90_ms, f.diff_p90_ms]
        text = "".join(f"{c:>+10.3f}" if i in (2, 5) else f"{c:>10.3f}" for i, c in enumerate(cells))
        paired = f"{f.paired_median_ms:+.3f} ({f.paired_ci95_low_ms:+.3f}, {f.paired_ci95_high_ms:+.3f})"
        verdict = "met" if f.diff_p50_ms < TARGET_MS else "MISSED" if math.isfinite(f.diff_p50_ms) else "n/a"
        print(f"{f.probe:<{width}}{text}  {paired:<26}{verdict}")
    print(f"\ntarget: diff p50 (on - off) < {TARGET_MS} ms.  peer: {PEER}")
    print(f"- {requests} measured requests per server and probe (after {warmup} warm-up), one at a time;")
    print("  both servers run on this machine at the same time and requests alternate between them (ABBA order),")
    print("  so the engine is never contended and a drift of the machine falls on both alike.")
    print("- paired diff: the median of on_i - off_i over the pairs, more robust than the difference of medians.")
    print("- the access log is on in both servers (one line per request), as a user would run them.")
    print("- on: the key is cached for gateway.key_cache_s, so about one request per interval reads the database.")
    print("- completions include the engine (1 token); GET /v1/models has no engine work: mostly the gateway.")


def print_problems(results: list[ProbeFigures]) -> None:
    for f in results:
        if f.errors:
            print(f"\n!!! {f.probe}: {f.errors} requests FAILED; their pairs are left out of the figures")
            for example in f.error_examples:
                print(f"!!!   {example}")


def write_json(path: Path, results: list[ProbeFigures], setup: dict[str, Any]) -> None:
    probes = {f.probe: bench.json_safe(dataclasses.asdict(f)) for f in results}
    document = {"setup": setup, "target_p50_ms": TARGET_MS, "peer": PEER, "probes": probes}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


# -- command line


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory (default: %(default)s)")
    parser.add_argument("--requests", type=bench.positive_int, default=400, help="measured requests per server")
    parser.add_argument("--warmup", type=count, default=20, help="warm-up requests per server, not counted")
    parser.add_argument("--json", type=Path, help="also write every figure (and every latency) here")
    parser.add_argument("--keep", action="store_true", help="keep the servers' temporary homes (logs, databases)")
    return parser


def measure(root: Path, model_dir: Path, requests: int, warmup: int) -> tuple[list[ProbeFigures], str]:
    ports = [bench.free_port()]
    while len(ports) < 2:
        port = bench.free_port()
        ports += [port] if port not in ports else []
    servers = [make_server("off", root, model_dir, ports[0], auth=False)]
    servers.append(make_server("on", root, model_dir, ports[1], auth=True))
    bench.progress("on: creating its key with `bitinglip keys create`")
    servers[1].key = create_key(servers[1])
    with contextlib.ExitStack() as stack:
        for server in servers:
            cmd = [bitinglip(), "serve", "--host", "127.0.0.1", "--port", str(server.port)]
            server.proc = stack.enter_context(bench.server_process(cmd, server.env, server.log_path))
        asyncio.run(wait_all_ready(servers))
        # One persistent client per server: every request goes over the same kept-alive connection.
        pair = [(server, stack.enter_context(open_client(server))) for server in servers]
        names = {server.name: served_name(server, client) for server, client in pair}
        if names["off"] != names["on"]:
            raise BenchError(f"the servers serve different models: {names}")
        model = names["on"]
        probes = [
            Probe("POST /v1/completions max_tokens=1", "POST", "/v1/completions",
                  {"model": model, "prompt": "Hi", "max_tokens": 1}),
            Probe("GET /v1/models", "GET", "/v1/models", None),
        ]  # fmt: skip
        results = [run_probe(pair, probe, warmup, requests) for probe in probes]
    return results, model


def main() -> int:
    args = build_parser().parse_args()
    model_dir = args.model.resolve()
    if not (model_dir / "config.json").is_file():
        print(f"bench_gateway: no model at {model_dir} (make model builds the default one)", file=sys.stderr)
        return 2
    bench.warn_about_machine()
    bench.progress(f"engine arguments (both servers): {ENGINE_ARGS}")
    root = Path(tempfile.mkdtemp(prefix="bitinglip-bench-gateway-"))
    try:
        results, model = measure(root, model_dir, args.requests, args.warmup)
    except BenchError as exc:
        print(f"\nbench_gateway: FAILED: {exc.message}", file=sys.stderr)
        if exc.output:
            print(f"--- its output, last lines:\n{exc.output}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench_gateway: interrupted; both servers stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            bench.progress(f"kept the servers' homes and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_report(results, args.requests, args.warmup)
    print_problems(results)
    if args.json:
        setup = {"model": str(model_dir), "served_name": model, "engine_args": ENGINE_ARGS,
                 "requests": args.requests, "warmup": args.warmup, "order": "ABBA, one request at a time",
                 "access_log": True, "key_limits": KEY_LIMITS}  # fmt: skip
        write_json(args.json, results, setup)
    return 1 if any(f.errors for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
