"""The dashboard's cost to the hot path: API-process CPU per token with its live page open, and without.

One `bitinglip serve` (the tiny model, the engine arguments `make bench` uses). Runs alternate ABBA, round after
round: "closed" (nothing else connected) and "open" (the dashboard's live feed, `GET /api/events`, read and
parsed as the page does, for the whole run: the cluster snapshots, the timeline and every access line). The load
is `make bench`'s at 64 at once: streaming /v1/completions, 32 tokens each. Measured: the server process's own
CPU time (/proc/<pid>/stat, not its engine child) per 1,000 generated tokens, tokens/s and TTFT p50, medians over
the rounds. Target: "open" within 3 % of "closed" in CPU per token.

    .venv/bin/python scripts/bench_dashboard.py [--rounds 6] [--requests 2048] [--concurrency 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvloop
from benchlib import (  # scripts/ is on sys.path when this runs as a script
    DEFAULT_ENGINE_ARGS,
    IDLE_QUIET,
    REPO,
    BenchError,
    Figures,
    LoadSpec,
    bitinglip_server,
    engine_settings,
    json_safe,
    make_prompts,
    measure_http,
    median_of,
    model_dir_of,
    positive_int,
    process_cpu_s,
    progress,
    served_models,
    summarize,
    tail,
    warn_about_machine,
)

TARGET_PCT = 3.0


@dataclasses.dataclass
class Feed:
    """What the page's reader got while a run lasted."""

    events: int = 0
    access_lines: int = 0


async def read_feed(url: str, feed: Feed) -> None:
    """Read /api/events until cancelled, parsing every event's JSON as the page does."""
    async with httpx.AsyncClient(timeout=None) as client, client.stream("GET", f"{url}/api/events") as reply:
        if reply.status_code != 200:
            raise BenchError(f"/api/events answered {reply.status_code}")
        name = ""
        async for line in reply.aiter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                feed.events += 1
                if name == "requests":
                    feed.access_lines += len(data)


@contextlib.asynccontextmanager
async def page_open(url: str, feed: Feed) -> AsyncIterator[None]:
    reader = asyncio.create_task(read_feed(url, feed))
    await asyncio.sleep(1.0)  # connected, its backlog read, as a page that was open before the load
    try:
        yield
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise BenchError(f"the feed's reader failed: {reader.exception()}")


async def one_run(url: str, pid: int, model: str, spec: LoadSpec, dashboard: bool) -> Figures:
    feed = Feed()
    async with page_open(url, feed) if dashboard else contextlib.nullcontext():
        before = process_cpu_s(pid)
        figures = summarize("open" if dashboard else "closed", *await measure_http(url, model, spec))
        figures.api_cpu_s = process_cpu_s(pid) - before
    tokens = figures.tokens_per_s * figures.wall_s
    figures.api_cpu_per_1k_tokens = figures.api_cpu_s * 1000 / tokens if tokens else None
    seen = f", the page got {feed.events} events, {feed.access_lines} access lines" if dashboard else ""
    progress(
        f"{figures.target}: {figures.tokens_per_s:,.0f} tokens/s, TTFT p50 {figures.ttft_p50_ms:.0f} ms, "
        f"API CPU {figures.api_cpu_per_1k_tokens or 0:.4f} s/1k tokens{seen}"
        + (f", {figures.errors} ERRORS" if figures.errors else "")
    )
    return figures


async def run(args: argparse.Namespace, model_dir: Path, workdir: Path) -> dict[str, list[Figures]]:
    settings = {**IDLE_QUIET, **engine_settings(DEFAULT_ENGINE_ARGS)}
    spec = LoadSpec(make_prompts(model_dir, args.requests, 64), args.concurrency, 32)
    runs: dict[str, list[Figures]] = {"closed": [], "open": []}
    async with bitinglip_server(workdir / "home", "bitinglip", settings, serve_args=["--model", str(model_dir)]) as srv:
        async with httpx.AsyncClient() as client:
            names = await served_models(client, srv.url)
        if not names:
            raise BenchError("bitinglip is ready but lists no model", tail(srv.log_path))
        progress("warming up")
        await measure_http(srv.url, names[0], LoadSpec(spec.prompts[:64], 16, 32))
        for index in range(args.rounds):
            order = (False, True) if index % 2 == 0 else (True, False)  # ABBA: a drift falls on both alike
            for dashboard in order:
                progress(f"round {index + 1}/{args.rounds}")
                runs["open" if dashboard else "closed"].append(
                    await one_run(srv.url, srv.proc.pid, names[0], spec, dashboard)
                )
    return runs


def report(runs: dict[str, list[Figures]]) -> bool:
    closed, opened = (median_of(runs[k], "api_cpu_per_1k_tokens") for k in ("closed", "open"))
    print()
    print(f"{'dashboard':<10} {'tokens/s':>9} {'TTFT p50 ms':>12} {'API CPU s/1k tokens':>20}   (medians)")
    for name in ("closed", "open"):
        r = runs[name]
        print(
            f"{name:<10} {median_of(r, 'tokens_per_s'):>9,.0f} {median_of(r, 'ttft_p50_ms'):>12.0f} "
            f"{median_of(r, 'api_cpu_per_1k_tokens'):>20.4f}"
        )
    change = (opened / closed - 1) * 100
    met = abs(change) <= TARGET_PCT
    print(f"\nAPI CPU per token with the live page open: {change:+.1f} % (target within {TARGET_PCT:.0f} %: "
          f"{'met' if met else 'MISSED'})")  # fmt: skip
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "data/models/tiny", help="model directory")
    parser.add_argument("--rounds", type=positive_int, default=6, help="closed/open pairs, ABBA")
    parser.add_argument(
        "--requests", type=positive_int, default=2048, help="per run (long enough for /proc's 10 ms CPU ticks)"
    )
    parser.add_argument("--concurrency", type=positive_int, default=64)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    model_dir = model_dir_of(args.model)
    if model_dir is None:
        return 2
    warn_about_machine()
    uvloop.install()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="bitinglip-bench-") as workdir:
            runs = asyncio.run(run(args, model_dir, Path(workdir)))
    except BenchError as exc:
        progress(f"FAILED: {exc.message}" + (f"; its output:\n{exc.output}" if exc.output else ""))
        return 1
    met = report(runs)
    progress(f"done in {time.monotonic() - started:.0f} s")
    if args.json:
        figures = {name: [json_safe(dataclasses.asdict(f)) for f in r] for name, r in runs.items()}
        args.json.write_text(json.dumps({"runs": figures}, indent=2) + "\n")
    errors = any(f.errors for r in runs.values() for f in r)
    return 0 if met and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
