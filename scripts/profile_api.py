"""Profile BitingLip's API process (cProfile, the event loop's thread) under a streaming load, and print where its
CPU goes: the top functions by own time, and the share of each part of the hot path.

    .venv/bin/python scripts/profile_api.py [--requests 512] [--concurrency 64] [--tokens 32] [--top 30]
        [--save api.prof]

The server is `bitinglip serve` serving the tiny model alone (settings as `make bench` uses), run in a child
process under cProfile; the load is streaming /v1/completions from this process. cProfile slows every Python
call, so absolute times are inflated: read the shares. vLLM's own frontend work (its output handler and
detokenizer) runs in the same process and is counted too, as it is for `vllm serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import benchlib as bench  # scripts/ is on sys.path when this runs as a script
import httpx

MODEL = bench.TINY_MODEL
CHILD = """
import cProfile, signal, sys, time
from bitinglip.cli import main
# The event loop thread's CPU time, not the wall clock: on a machine shared with the engine's busy processes a
# wall-clock profile charges every preemption to whichever call made the syscall (zmq sends, socket writes).
profiler, out = cProfile.Profile(time.thread_time), sys.argv[1]
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, lambda *_: (profiler.disable(), profiler.dump_stats(out)))
sys.argv = ["bitinglip", "serve"]
main()
"""
# Where each function belongs, by the file it is in (first match wins).
PARTS = [
    ("vLLM frontend (output handler, detokenizer)", ("vllm/",)),
    ("BitingLip serving (chunks, loops)", ("bitinglip/gateway/serving",)),
    ("BitingLip edge (middleware, accounting, auth)", ("bitinglip/",)),
    ("msgspec encode/structs", ("msgspec",)),
    ("Litestar (routing, Stream response)", ("litestar/",)),
    ("anyio", ("anyio/",)),
    ("uvicorn / httptools", ("uvicorn/", "httptools")),
    ("structlog / logging", ("structlog/", "logging/")),
    ("asyncio / uvloop", ("asyncio/", "uvloop", "selectors")),
    ("tokenizers / transformers", ("tokenizers", "transformers/")),
]


def request(api: str, i: int, tokens: int) -> tuple[str, dict[str, object]]:
    """The route and streaming body of request ``i`` on ``api``: the same prompt and tokens on each."""
    prompt = f"Request {i}: the quick brown fox"
    if api == "completions":
        body = {"prompt": prompt, "max_tokens": tokens, "ignore_eos": True}
        return "/v1/completions", body
    if api == "chat":
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "ignore_eos": True}
        return "/v1/chat/completions", body
    if api == "responses":
        return "/v1/responses", {"input": prompt, "max_output_tokens": tokens, "ignore_eos": True, "store": False}
    return "/v1/messages", {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens}


async def load(url: str, requests: int, concurrency: int, tokens: int, api: str = "completions") -> tuple[float, int]:
    # aiohttp, as make bench's load: an httpx client kept only 5-20 requests in flight at "64 at once" here.
    gate = asyncio.Semaphore(concurrency)
    events = 0
    failed: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency + 8)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as client:

        async def one(i: int) -> None:
            nonlocal events
            path, body = request(api, i, tokens)
            body |= {"model": MODEL.name, "stream": True}
            async with gate:
                try:
                    async with client.post(url + path, json=body) as r:
                        async for line in r.content:
                            events += line.startswith(b"data: {")
                except (aiohttp.ClientError, TimeoutError) as exc:  # counted: one failure does not lose the profile
                    failed.append(f"{type(exc).__name__}: {exc}")

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        if failed:
            print(f"{len(failed)} of {requests} requests failed, e.g. {failed[0]}", file=sys.stderr)
        return time.perf_counter() - began, events


def part_of(filename: str) -> str:
    for name, needles in PARTS:
        if any(n in filename for n in needles):
            return name
    return "other (builtins, C calls)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--port", type=int, default=8031)
    parser.add_argument("--api", choices=("completions", "chat", "responses", "messages"), default="completions")
    parser.add_argument("--save", type=Path, help="keep the raw profile here (pstats), e.g. for cumulative times")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bl-profile-"))
    stats_path = home / "api.prof"
    env = bench.bitinglip_env(
        home,
        {
            "BITINGLIP_CLUSTER__MODEL": str(MODEL),
            "BITINGLIP_CLUSTER__ENGINE__MAX_NUM_SEQS": "256",
            "BITINGLIP_SERVER__PORT": str(args.port),
            **bench.IDLE_QUIET,
        },
    )
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(stats_path)], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            print(f"server not ready; see {home / 'server.log'}", file=sys.stderr)
            return 1
        asyncio.run(load(url, 64, min(64, args.concurrency), args.tokens, args.api))  # warm up
        cpu = bench.process_cpu_s(proc.pid)
        proc.send_signal(signal.SIGUSR1)
        seconds, events = asyncio.run(load(url, args.requests, args.concurrency, args.tokens, args.api))
        proc.send_signal(signal.SIGUSR2)
        used = bench.process_cpu_s(proc.pid) - cpu
        time.sleep(2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    tokens = args.requests * args.tokens
    print(
        f"{args.requests} streaming requests of {args.tokens} tokens, {args.concurrency} at once: {seconds:.2f} s, "
        f"{tokens / seconds:,.0f} tokens/s, {events:,} events; API process CPU under cProfile {used:.2f} s "
        f"({used / tokens * 1e6:.0f} us per token)"
    )
    if args.save:
        shutil.copyfile(stats_path, args.save)
    stats = pstats.Stats(str(stats_path))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    shares: dict[str, float] = {}
    for (filename, _, _), (_, _, tt, _, _) in entries.items():
        shares[part_of(filename)] = shares.get(part_of(filename), 0.0) + tt
    print(f"\nown time by part of the hot path (of {total:.2f} s profiled):")
    for name, tt in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * tt / total:5.1f}%  {name}")
    print(f"\ntop {args.top} functions by own time:")
    ranked = sorted(entries.items(), key=lambda kv: -kv[1][2])[: args.top]
    for (filename, line, name), (_, calls, tt, _ct, _) in ranked:
        where = filename.split("site-packages/")[-1].split("/src/")[-1]
        print(f"  {100 * tt / total:5.1f}%  {calls / tokens:6.2f}/token  {name} ({where}:{line})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
