"""Does any one request stall the server? `/health` latency and the event loop's lag under each hostile case.

Starts `bitinglip serve` on the tiny chat and embedding models, then runs each case below while a second thread
polls `/health` every 20 ms, and prints, per case, the slowest and the 99th-percentile `/health` answer, the
event loop's lag as the server measured it (`bitinglip_event_loop_lag_seconds`: the largest bucket reached and
the mean), and what the case's requests got. The first row is the idle baseline. Last, on a second server with
a deployment admitting 4 running + 4 queued, a flood of ten times that many at once: how soon the ones past the bound
are refused (503), as the client saw it and as the server decided it.

    .venv/bin/python scripts/bench_stall.py [--model DIR] [--embedding-model DIR]

Run it on an older checkout (PYTHONPATH=OLD/src) for the figures before a change; a server without the loop-lag
histogram shows "-" there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import benchlib as bench  # scripts/ is on sys.path when this runs as a script
import httpx

WORDS = "word " * 1_000_000  # 5 MB of prompt
LAG = re.compile(r'^bitinglip_event_loop_lag_seconds_(bucket\{le="([^"]+)"\}|sum|count) (\S+)$')


@contextlib.contextmanager
def server(model: Path, embedding: Path | None, home: Path, **settings: str) -> Iterator[str]:
    port = bench.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITINGLIP_")}
    env.update(
        BITINGLIP_HOME=str(home),
        BITINGLIP_CLUSTER__MODEL=str(model),
        BITINGLIP_CLUSTER__EMBEDDING_MODEL=str(embedding or ""),
        BITINGLIP_SERVER__PORT=str(port),
        BITINGLIP_SERVER__ACCESS_LOG="false",
    )
    env.update(settings)
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen([bench.BITINGLIP, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: see {home / 'server.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        else:
            raise SystemExit("the server was not ready after 600 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


class Poll:
    """`/health` every 20 ms on its own thread: each answer's time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                began = time.perf_counter()
                client.get(f"{self.url}/health")
                self.times.append(time.perf_counter() - began)
                self.stop.wait(0.02)


def lag(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if m := LAG.match(line):
            found[m[2] or m[1]] = float(m[3])
    return found


def post(url: str, route: str, body: Any, timeout: float = 600) -> int:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    return httpx.post(f"{url}{route}", content=content, headers=headers, timeout=timeout).status_code


def stream(url: str, body: dict[str, Any]) -> int:
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        for _ in response.iter_lines():
            pass
        return response.status_code


def slow_headers(url: str, connections: int = 50, seconds: float = 15) -> str:
    host, port = url.removeprefix("http://").split(":")

    async def one() -> bool:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(int(seconds * 2)):
                await asyncio.sleep(0.5)
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                if reader.at_eof():
                    return True
            return False
        except OSError:
            return True
        finally:
            writer.close()

    async def all_of_them() -> list[bool]:
        return await asyncio.gather(*(one() for _ in range(connections)))

    closed = asyncio.run(all_of_them())
    return f"{sum(closed)} of {connections} closed within {seconds:.0f} s"


def cases(model: str, embedding: str | None) -> list[tuple[str, Callable[[str], str]]]:
    hi = [{"role": "user", "content": "hi"}]
    heavy = {"model": model, "prompt": "hi", "n": 64, "logprobs": 20, "max_tokens": 1500, "ignore_eos": True}

    def statuses(*codes: int) -> str:
        return ", ".join(str(c) for c in codes)

    deep = b"{" + b'"a":{' * 10_000 + b"}" * 10_001
    nested = b'{"model": ' + json.dumps(model).encode() + b', "messages": [], "structured_outputs": ' + deep + b"}"
    properties = {f"p{i}": {"type": "string", "description": "x" * 40} for i in range(15_000)}
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": properties}}}
    ]
    listed: list[tuple[str, Callable[[str], str]]] = [
        ("idle", lambda url: (time.sleep(3), "-")[1]),
        (
            "4 streams n 64 logprobs 20, 300 tokens",
            lambda url: statuses(*[stream(url, {**heavy, "max_tokens": 300, "stream": True}) for _ in range(4)]),
        ),
        (
            "stream n 16 logprobs 15, 300 tokens",
            lambda url: statuses(stream(url, {**heavy, "n": 16, "logprobs": 15, "max_tokens": 300, "stream": True})),
        ),
        (
            "5 MB prompt: /v1/completions",
            lambda url: statuses(post(url, "/v1/completions", {"model": model, "prompt": WORDS})),
        ),
        (
            "5 MB prompt: /v1/chat/completions",
            lambda url: statuses(
                post(url, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": WORDS}]})
            ),
        ),
        ("5 MB prompt: /tokenize", lambda url: statuses(post(url, "/tokenize", {"model": model, "prompt": WORDS}))),
        (
            "1 MB tools",
            lambda url: statuses(post(url, "/v1/chat/completions", {"model": model, "messages": hi, "tools": tools})),
        ),
        ("JSON nested 10,000 deep", lambda url: statuses(post(url, "/v1/chat/completions", nested))),
        (
            "100,000-way choice",
            lambda url: statuses(
                post(
                    url,
                    "/v1/chat/completions",
                    {
                        "model": model,
                        "messages": hi,
                        "structured_outputs": {"choice": [f"c{i}" for i in range(100_000)]},
                    },
                )
            ),
        ),
        ("50 slow-header connections", slow_headers),
    ]
    if embedding:
        listed.insert(
            6,
            (
                "5 MB prompt: /v1/embeddings",
                lambda url: statuses(post(url, "/v1/embeddings", {"model": embedding, "input": WORDS})),
            ),
        )
    return listed


def run_case(
    url: str, work: Callable[[str], str]
) -> tuple[list[float], dict[str, float], dict[str, float], str, float]:
    before = lag(url)
    poll = Poll(url)
    poll.thread.start()
    began = time.perf_counter()
    try:
        outcome = work(url)
    except Exception as exc:  # a case that breaks the server is a finding, not a crash of the bench
        outcome = f"{type(exc).__name__}: {exc}"
    took = time.perf_counter() - began
    time.sleep(0.3)
    poll.stop.set()
    poll.thread.join(120)
    return poll.times, before, lag(url), outcome, took


def lag_figures(before: dict[str, float], after: dict[str, float]) -> tuple[str, str]:
    if not after:
        return "-", "-"
    count = after.get("count", 0) - before.get("count", 0)
    total = after.get("sum", 0) - before.get("sum", 0)
    reached = [
        float(le) for le, n in after.items() if le not in ("sum", "count", "+Inf") and n - before.get(le, 0) < count
    ]
    worst = f"> {max(reached) * 1000:.0f} ms" if reached else "< 1 ms"
    return worst, f"{total / count * 1000:.1f} ms" if count else "-"


def flood(model: Path, home: Path, slots: int = 4, rounds: int = 3) -> None:
    """Ten times a deployment's admission bound at once: how soon the requests past it are refused, as the
    client saw it and as the server decided it (its access line's `ms`, arrival to answer)."""
    deployment = {"model": str(model), "name": "tiny", "max_concurrency": slots, "max_queue": slots}
    settings = {
        "BITINGLIP_CLUSTER__MODEL": "",
        "BITINGLIP_CLUSTER__DEPLOYMENTS": "@json " + json.dumps([deployment]),
        "BITINGLIP_SERVER__ACCESS_LOG": "true",
    }
    body = {"model": "tiny", "prompt": "Tell me a story", "max_tokens": 200, "ignore_eos": True, "stream": True}
    at_once = 10 * (slots + slots)  # ten times what is admitted: running plus queued

    async def one(http: httpx.AsyncClient) -> tuple[int, float]:
        began = time.perf_counter()
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for _ in response.aiter_lines():
                pass
            return response.status_code, time.perf_counter() - began

    async def burst(url: str) -> list[tuple[int, float]]:
        limits = httpx.Limits(max_connections=at_once)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            return await asyncio.gather(*(one(http) for _ in range(at_once)))

    with server(model, None, home, **settings) as url:
        answers = [answer for _ in range(rounds) for answer in asyncio.run(burst(url))]
    refused = sorted(took for status, took in answers if status == 503)
    lines = (home / "server.log").read_text(errors="replace").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    decided = [e["ms"] for e in entries if e.get("event") == "http.request" and e.get("status") == 503]
    print(
        f"\nflood: {rounds} x {at_once} streams at once, admission {slots} running + {slots} queued:"
        f" {len(answers) - len(refused)} served, {len(refused)} refused (503)"
    )
    if refused and decided:
        print(
            f"  refused after (client): p50 {statistics.median(refused) * 1000:.0f} ms,"
            f" max {refused[-1] * 1000:.0f} ms;"
            f" decided in the server: p50 {statistics.median(decided):.0f} ms, max {max(decided):.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=bench.REPO / "data/models/tiny")
    parser.add_argument("--embedding-model", type=Path, default=bench.REPO / "data/models/tiny-embed")
    args = parser.parse_args()
    embedding = args.embedding_model if args.embedding_model.is_dir() else None
    with tempfile.TemporaryDirectory() as home, server(args.model, embedding, Path(home)) as url:
        names = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
        model = next(n for n in names if n == args.model.name)
        embed = next((n for n in names if embedding is not None and n == embedding.name), None)
        print(f"{'case':42} {'/health max':>12} {'p99':>8} {'loop lag max':>13} {'mean':>8} {'took':>7}  answers")
        for name, work in cases(model, embed):
            times, before, after, outcome, took = run_case(url, work)
            p99 = (
                statistics.quantiles(times, n=100, method="inclusive")[98] if len(times) >= 2 else max(times, default=0)
            )
            worst, mean = lag_figures(before, after)
            print(
                f"{name:42} {max(times, default=0) * 1000:>9.0f} ms {p99 * 1000:>5.0f} ms {worst:>13} {mean:>8}"
                f" {took:>6.1f}s  {outcome}",
                flush=True,
            )
    with tempfile.TemporaryDirectory() as home:
        flood(args.model, Path(home))


if __name__ == "__main__":
    main()
