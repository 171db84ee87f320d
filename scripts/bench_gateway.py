"""Gateway overhead: what API-key auth and per-key limits add to one request, on the same server with them off.

Two `bitinglip serve` processes at once, same model and engine arguments, each with its own home and port: "off"
(gateway.auth = false) and "on" (auth, and a key made beforehand with `bitinglip keys create` whose rpm, tpm and
concurrency limits are checked, reserved and settled on every request but never reached). Usage accounting,
metrics and the access log run in both, as a user runs the server.

Load: one request at a time (the engine is never contended), alternating between the servers in ABBA order, on
kept-alive connections, over --rounds rounds (4) that restart both servers, every other one with their places
(start order, port, engine core) swapped: where a process lands moved an identical server's latency by up to
0.3 ms without the engine and 2 ms with it. Probes: POST /v1/completions with max_tokens 1 (the whole path);
the same with max_tokens past the context (every gateway step, refused after tokenizing: no engine work);
GET /v1/models.

Reading the output: p50/p90 latency per server; the latency difference per round (median of on_i - off_i) and
their mean, whose spread is the machine's noise; and the API process's CPU time per request (/proc/<pid>/stat,
the server's own process, not the engine), whose difference is the work the gateway adds, free of that noise.
Target: under 0.5 ms per request; LiteLLM publishes 2-4 ms of proxy overhead.

    .venv/bin/python scripts/bench_gateway.py [--requests 400] [--rounds 4] [--json out.json] [--keep]
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

import benchlib as bench  # scripts/ is on sys.path when this runs as a script
import httpx
import numpy as np
from benchlib import BenchError

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
    status: int = 200  # what it must answer


@dataclasses.dataclass
class Round:
    """One round of one probe: paired latencies (seconds), failures, and each API process's CPU seconds."""

    off_s: list[float] = dataclasses.field(default_factory=list)
    on_s: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    cpu_off_s: float = 0.0
    cpu_on_s: float = 0.0


@dataclasses.dataclass
class ProbeFigures:
    probe: str
    pairs: int
    errors: int
    off_p50_ms: float
    on_p50_ms: float
    off_p90_ms: float
    on_p90_ms: float
    round_medians_ms: list[float]  # per round, the median of on_i - off_i
    latency_overhead_ms: float  # their mean
    cpu_off_ms: float  # the API process's CPU time per request (user + system, all its threads)
    cpu_on_ms: float
    cpu_overhead_ms: float
    error_examples: list[str]


def make_server(name: str, root: Path, model_dir: Path, port: int, auth: bool, engine_core: str) -> Server:
    home = root / name
    home.mkdir()
    env = bench.bitinglip_env(
        home,
        {
            "BITINGLIP_CLUSTER__MODEL": str(model_dir),
            "BITINGLIP_CLUSTER__ENGINE": "@json " + json.dumps(ENGINE_ARGS),
            "BITINGLIP_CLUSTER__KV_CACHE_GIB": "0.25",
            "BITINGLIP_SERVER__ACCESS_LOG": "true",  # the same for both, and as a user runs it
            "BITINGLIP_GATEWAY__AUTH": "true" if auth else "false",
            # Each engine on a core of its own, its OpenMP threads asleep when idle: an engine spinning after its
            # step (libgomp's default) slowed the other server's next request (p90 0.5 s instead of 10 ms).
            "VLLM_CPU_OMP_THREADS_BIND": engine_core,
            "OMP_WAIT_POLICY": "PASSIVE",
        },
    )
    return Server(name, port, env, home / "server.log")


def create_key(server: Server) -> str:
    """`bitinglip keys create --json` on the server's own database, before the server starts."""
    limits = [arg for name, value in KEY_LIMITS.items() for arg in (f"--{name}", str(value))]
    cmd = [bench.BITINGLIP, "keys", "create", "--name", "bench", *limits, "--json"]
    out = subprocess.run(cmd, env=server.env, cwd=bench.REPO, capture_output=True, text=True, timeout=KEY_TIMEOUT_S)
    if out.returncode != 0:
        raise BenchError(f"`bitinglip keys create` failed with exit code {out.returncode}", out.stdout + out.stderr)
    return str(json.loads(out.stdout)["key"])


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
        raise BenchError(f"{server.name}: GET /v1/models answered {response.status_code}", bench.tail(server.log_path))
    return str(names[0])


def timed(client: httpx.Client, probe: Probe) -> tuple[float, str | None]:
    """One request's wall-clock seconds, and an error unless it answered 200."""
    start = time.perf_counter()
    try:
        response = client.request(probe.method, probe.path, json=probe.body)
    except httpx.HTTPError as exc:
        return time.perf_counter() - start, f"{type(exc).__name__}: {exc}"[:200]
    elapsed = time.perf_counter() - start
    if response.status_code != probe.status:
        return elapsed, f"HTTP {response.status_code}: {response.text[:160]}"
    return elapsed, None


def api_cpu_s(server: Server) -> float:
    """CPU seconds the server's API process (not its engine, a child process) has used so far."""
    assert server.proc is not None
    return bench.process_cpu_s(server.proc.pid)


def run_probe(pair: list[tuple[Server, httpx.Client]], probe: Probe, warmup: int, requests: int) -> Round:
    """warmup + requests rounds, one request per server each, in ABBA order; a pair with an error is dropped."""
    result = Round()
    bench.progress(f"{probe.label}: {warmup} warm-up, then {requests} measured requests per server")
    cpu: dict[str, float] = {}
    for index in range(warmup + requests):
        if index == warmup:
            cpu = {server.name: api_cpu_s(server) for server, _ in pair}
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
                result.errors.append(f"{server.name}: {error}")
                failed = True
            took[server.name] = seconds
        if index < warmup or failed:
            continue
        result.off_s.append(took["off"])
        result.on_s.append(took["on"])
    used = {server.name: api_cpu_s(server) - cpu[server.name] for server, _ in pair}
    result.cpu_off_s, result.cpu_on_s = used["off"], used["on"]
    return result


def summarize(label: str, rounds: list[Round]) -> ProbeFigures:
    off_s = [x for r in rounds for x in r.off_s]
    on_s = [x for r in rounds for x in r.on_s]
    per_round = [float(np.median([(b - a) * 1000 for a, b in zip(r.off_s, r.on_s, strict=True)])) for r in rounds]
    pairs = len(off_s)
    cpu_off = sum(r.cpu_off_s for r in rounds) * 1000 / max(1, pairs)
    cpu_on = sum(r.cpu_on_s for r in rounds) * 1000 / max(1, pairs)
    errors = [e for r in rounds for e in r.errors]
    return ProbeFigures(
        probe=label,
        pairs=pairs,
        errors=len(errors),
        off_p50_ms=bench.percentile_ms(off_s, 50),
        on_p50_ms=bench.percentile_ms(on_s, 50),
        off_p90_ms=bench.percentile_ms(off_s, 90),
        on_p90_ms=bench.percentile_ms(on_s, 90),
        round_medians_ms=per_round,
        latency_overhead_ms=float(np.mean(per_round)) if per_round else math.nan,
        cpu_off_ms=cpu_off,
        cpu_on_ms=cpu_on,
        cpu_overhead_ms=cpu_on - cpu_off,
        error_examples=sorted(set(errors))[:5],
    )


def print_report(results: list[ProbeFigures], requests: int, warmup: int) -> None:
    print("\nGateway overhead per request: auth + per-key limits on vs off (usage, metrics, access log in both). ms.")
    width = max(len(f.probe) for f in results) + 2
    cols = max(len(" / ".join(f"{m:+.2f}" for m in f.round_medians_ms)) for f in results) + 2
    head = f"{'probe':<{width}}" + "".join(f"{h:>9}" for h in ("off p50", "on p50", "off p90", "on p90"))
    print(head + f"  {'latency diff per round':<{cols}}{'mean':>7}  {'API CPU off':>11}{'on':>7}{'diff':>8}  target")
    for f in results:
        text = "".join(f"{c:>9.3f}" for c in (f.off_p50_ms, f.on_p50_ms, f.off_p90_ms, f.on_p90_ms))
        per_round = " / ".join(f"{m:+.2f}" for m in f.round_medians_ms)
        verdict = "met" if f.cpu_overhead_ms < TARGET_MS else "MISSED"
        cpu = f"{f.cpu_off_ms:>11.3f}{f.cpu_on_ms:>7.3f}{f.cpu_overhead_ms:>+8.3f}"
        print(f"{f.probe:<{width}}{text}  {per_round:<{cols}}{f.latency_overhead_ms:>+7.2f}  {cpu}  {verdict}")
    print(f"\ntarget: under {TARGET_MS} ms per request, judged on the API process's CPU time (diff).  peer: {PEER}")
    print(f"- {requests} measured requests per server and probe (after {warmup} warm-up each round), one at a time,")
    print("  alternating between the two servers (ABBA); both run at once on this machine. The servers are")
    print("  restarted each round, their places (start order, port, engine core) swapped every other round.")
    print("- latency diff: per round the median of on_i - off_i. Where a process lands moves it by up to +-2 ms with")
    print("  the engine and +-0.3 ms without, with opposite signs when the places swap: the mean is shown, and the")
    print("  spread of the rounds is the noise. API CPU: the server's own process (not the engine) per request,")
    print("  from /proc/<pid>/stat over the measured requests: the work the gateway adds, free of that noise.")
    print("- on: the key is cached for gateway.key_cache_s, so about one request per interval reads the database.")


def write_json(path: Path, results: list[ProbeFigures], setup: dict[str, Any]) -> None:
    probes = {f.probe: bench.json_safe(dataclasses.asdict(f)) for f in results}
    document = {"setup": setup, "target_p50_ms": TARGET_MS, "peer": PEER, "probes": probes}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=bench.TINY_MODEL, help="model directory (default: %(default)s)")
    parser.add_argument("--requests", type=bench.positive_int, default=400, help="measured requests per server")
    parser.add_argument(
        "--rounds", type=bench.positive_int, default=4, help="server restarts, places swapped every other one"
    )
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per server, not counted")
    parser.add_argument("--json", type=Path, help="also write every figure (and every latency) here")
    parser.add_argument("--keep", action="store_true", help="keep the servers' temporary homes (logs, databases)")
    return parser


def measure(
    root: Path, model_dir: Path, requests: int, warmup: int, swapped: bool, index: int
) -> tuple[dict[str, Round], str]:
    """One round: both servers started, every probe sampled, both stopped. ``swapped`` trades the servers'
    places (start order, port, engine core), so that where a process lands weighs on both alike."""
    ports = [bench.free_port(), bench.free_port()]
    while ports[1] == ports[0]:
        ports[1] = bench.free_port()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    binds = [str(c) for c in cores[:2]] if len(cores) >= 2 else ["auto", "auto"]
    places = [(ports[0], binds[0]), (ports[1], binds[1])]
    if swapped:
        places.reverse()
    round_root = root / f"round-{index + 1}"
    round_root.mkdir()
    servers = [
        make_server("off", round_root, model_dir, places[0][0], auth=False, engine_core=places[0][1]),
        make_server("on", round_root, model_dir, places[1][0], auth=True, engine_core=places[1][1]),
    ]
    bench.progress(f"round {index + 1}{' (places swapped)' if swapped else ''}: off engine on core {places[0][1]}, "
                   f"on engine on core {places[1][1]}; creating the key with `bitinglip keys create`")  # fmt: skip
    servers[1].key = create_key(servers[1])
    with contextlib.ExitStack() as stack:
        for server in servers[::-1] if swapped else servers:
            cmd = [bench.BITINGLIP, "serve", "--host", "127.0.0.1", "--port", str(server.port)]
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
            # Every gateway step (key, limits, model lease, tokenizing, usage, metrics, log line), no engine work:
            # max_tokens past the context is refused once the prompt is tokenized.
            Probe("POST /v1/completions, 400 after tokenizing", "POST", "/v1/completions",
                  {"model": model, "prompt": "Hi", "max_tokens": 100_000}, status=400),
            Probe("GET /v1/models", "GET", "/v1/models", None),
        ]  # fmt: skip
        samples = {probe.label: run_probe(pair, probe, warmup, requests) for probe in probes}
    return samples, model


def measure_both(
    root: Path, model_dir: Path, requests: int, warmup: int, rounds_count: int
) -> tuple[list[ProbeFigures], str]:
    """Rounds with the servers' places swapped every other one; each probe's pairs pooled over all."""
    rounds: dict[str, list[Round]] = {}
    model = ""
    for index in range(rounds_count):
        samples, model = measure(root, model_dir, max(1, requests // rounds_count), warmup, index % 2 == 1, index)
        for label, result in samples.items():
            rounds.setdefault(label, []).append(result)
    return [summarize(label, results) for label, results in rounds.items()], model


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
        results, model = measure_both(root, model_dir, args.requests, args.warmup, args.rounds)
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
    for f in results:
        if f.errors:
            print(f"\n!!! {f.probe}: {f.errors} requests FAILED (left out): {'; '.join(f.error_examples)}")
    if args.json:
        setup = {"model": str(model_dir), "served_name": model, "engine_args": ENGINE_ARGS,
                 "requests": args.requests, "warmup": args.warmup, "rounds": args.rounds, "order": "ABBA",
                 "access_log": True, "key_limits": KEY_LIMITS}  # fmt: skip
        write_json(args.json, results, setup)
    return 1 if any(f.errors for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
