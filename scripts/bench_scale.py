"""Several instances on PostgreSQL: what the shared database and forwarding cost a request.

Three `bitinglip serve` processes on one machine, each with its own home, the first two with the tiny model:
"sqlite" (the embedded default), "postgresql" (the same server on a PostgreSQL database the script starts, as
tests/postgres.py does) and "front" (on the same PostgreSQL, serving nothing and loading nothing: every request
it gets is forwarded to "postgresql"). The same load goes to each in turn, over --rounds rounds (order rotated):
streaming chat, --requests requests, --concurrency at once, --max-tokens tokens each.

Reading the output: per target the medians over the rounds of TTFT p50, tokens/s and the CPU time per request of
the process that took the request (the API process, not the engine; for "front" its own process, the forwarding
hop, on top of what "postgresql" spends serving it). Targets (issue 26): PostgreSQL at most +0.3 ms of API CPU per
request against SQLite.

--batch-lines N (0: skipped): then batch throughput, one instance against two. A batch of N /v1/completions lines
(--batch-tokens each, ignore_eos) is created on "postgresql" while it is the only instance serving the model
("front" serves nothing), then again once a second instance, "postgresql-2", serves the same model on the same
database (its queue takes lines of the same batch); each timed from create to `completed`, every line checked.
Both instances share this machine's cores, so the figure is what the queue's split costs or gains here, not what
two machines would give.

--limited: API keys on, and every request made with a key whose rpm, tpm and concurrency are checked, reserved
and settled (never reached): in this process's memory on "sqlite", in the database on "postgresql" (the limits
shared by every instance), so the difference is also what exact limits across instances cost.

    .venv/bin/python scripts/bench_scale.py [--requests 256] [--concurrency 16] [--rounds 3] [--limited]
        [--batch-lines 1000] [--batch-tokens 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

import bench_batch  # scripts/ is on sys.path when this runs as a script
import httpx
from benchlib import (
    CHAT,
    READY_TIMEOUT_S,
    REPO,
    SMALL_ENGINE_ARGS,
    TINY_MODEL,
    BenchError,
    LoadSpec,
    Server,
    bitinglip_cli,
    bitinglip_server,
    engine_settings,
    make_prompts,
    measure_api,
    progress,
    wait_deployment,
)

sys.path.insert(0, str(REPO / "tests"))
from postgres import PostgresServer  # the tests' own server: initdb, pg_ctl, a database per use


def limited_key(home: Path, settings: dict[str, str]) -> str:
    """A key whose limits every request is checked, reserved and settled against, and none reaches."""
    out = bitinglip_cli(
        home, settings, "keys", "create", "--name", "bench", "--json", "--scope", "admin",
        "--rpm", "1000000", "--tpm", "1000000000", "--max-concurrent", "10000",
    )  # fmt: skip
    key: str = json.loads(out)["key"]
    return key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limited", action="store_true", help="keys on, each request under a limited key")
    parser.add_argument("--batch-lines", type=int, default=1000, help="batch throughput, one instance vs two (0: off)")
    parser.add_argument("--batch-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser


async def run(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], Batches]:
    if not TINY_MODEL.is_dir():
        raise BenchError(f"no model at {TINY_MODEL}: run `make model` first")
    auth = "true" if args.limited else "false"
    base = engine_settings(SMALL_ENGINE_ARGS) | {"BITINGLIP_GATEWAY__AUTH": auth, "OMP_WAIT_POLICY": "PASSIVE"}
    batches = Batches()
    postgres = PostgresServer()
    try:
        url = postgres.new_url()
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            root = Path(tmp)
            async with contextlib.AsyncExitStack() as stack:
                model = {"BITINGLIP_CLUSTER__MODEL": "tiny"}
                on_pg = base | model | {"BITINGLIP_DB__URL": url, "BITINGLIP_CLUSTER__HEARTBEAT_S": "1"}
                keys = {}
                if args.limited:  # one key per database, made before its servers start
                    keys = {
                        "sqlite": limited_key(root / "sqlite", base | model),
                        "postgresql": limited_key(root / "postgresql", on_pg),
                    }
                    keys["front"] = keys["postgresql"]
                sqlite = await stack.enter_async_context(
                    bitinglip_server(root / "sqlite", "sqlite", base | model, register=(TINY_MODEL, "tiny"))
                )
                pg = await stack.enter_async_context(
                    bitinglip_server(root / "postgresql", "postgresql", on_pg, register=(TINY_MODEL, "tiny"))
                )
                front_settings = on_pg | {"BITINGLIP_CLUSTER__MODEL": "", "BITINGLIP_CLUSTER__LOAD_ON_DEMAND": "false"}
                front = await stack.enter_async_context(bitinglip_server(root / "front", "front", front_settings))
                await asyncio.sleep(2)  # a heartbeat: front knows what postgresql serves
                targets = {"sqlite": sqlite, "postgresql": pg, "front": front}
                results = await streaming_rounds(targets, keys, args)
                if args.batch_lines:
                    headers = {"Authorization": f"Bearer {keys['postgresql']}"} if keys else {}
                    batches.one = await timed_batch(pg, headers, args, "one instance")
                    # The same model, declared (its registry row is the first's: same machine, same files).
                    second = await stack.enter_async_context(
                        bitinglip_server(root / "postgresql-2", "postgresql-2", on_pg)
                    )
                    await wait_deployment(second, "tiny", gone=False)
                    await asyncio.sleep(2)  # a heartbeat
                    before = [await served(s, headers) for s in (pg, second)]
                    batches.two = await timed_batch(pg, headers, args, "two instances")
                    batches.split = [await served(s, headers) - n for s, n in zip((pg, second), before, strict=True)]
                    progress(f"lines run: {batches.split[0]} by postgresql, {batches.split[1]} by postgresql-2")
    finally:
        postgres.stop()
    medians = {
        name: {field: statistics.median(r[field] for r in rounds) for field in rounds[0]}
        for name, rounds in results.items()
    }
    return medians, batches


@dataclasses.dataclass
class Batches:
    one: bench_batch.Throughput | None = None  # the batch with one instance serving the model
    two: bench_batch.Throughput | None = None  # and with two
    split: list[int] = dataclasses.field(default_factory=list)  # lines run by each of the two


async def streaming_rounds(
    targets: dict[str, Server], keys: dict[str, str], args: argparse.Namespace
) -> dict[str, list[dict[str, float]]]:
    """The same streaming load on each target in turn, --rounds times, the order rotated each round."""
    prompts = make_prompts(TINY_MODEL, args.requests, 64)
    spec = LoadSpec(prompts, args.concurrency, args.max_tokens)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    order = list(targets)
    for round_no in range(args.rounds):
        for name in order[round_no % 3 :] + order[: round_no % 3]:
            server = targets[name]
            headers = {"Authorization": f"Bearer {keys[name]}"} if keys else None
            figures = await measure_api(server.url, server.proc.pid, CHAT, ["tiny"], spec, name, headers=headers)
            if figures.errors:
                raise BenchError(f"{name}: {figures.errors} errors, e.g. {figures.error_examples}")
            per_request_ms = (figures.api_cpu_s or 0.0) * 1000 / figures.requests
            results[name].append(
                {
                    "ttft_p50_ms": figures.ttft_p50_ms,
                    "tokens_per_s": figures.tokens_per_s,
                    "api_cpu_ms_per_request": per_request_ms,
                }
            )
            progress(
                f"round {round_no + 1} {name}: TTFT p50 {figures.ttft_p50_ms:.1f} ms, "
                f"{figures.tokens_per_s:.0f} tokens/s, API CPU {per_request_ms:.3f} ms/request"
            )
    return results


async def served(server: Server, headers: dict[str, str]) -> int:
    """Requests the tiny model's deployment on `server` has served."""
    async with httpx.AsyncClient(timeout=30.0, headers=headers) as client:
        answer = await client.get(f"{server.url}/api/deployments/tiny")
    answer.raise_for_status()
    return int(answer.json()["stats"]["requests"])


async def timed_batch(
    server: Server, headers: dict[str, str], args: argparse.Namespace, label: str
) -> bench_batch.Throughput:
    """A batch of --batch-lines lines created on `server`, timed to `completed`, its output checked."""
    prompts = make_prompts(TINY_MODEL, args.batch_lines, 64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=30.0), headers=headers) as client:
        api = bench_batch.Api(client, server, READY_TIMEOUT_S * 4)
        file_id = await api.upload(bench_batch.batch_lines("tiny", prompts, args.batch_tokens))
        try:
            return await api.run_batch(file_id, args.batch_lines, f"batch, {label}")
        except BenchError as exc:  # with what the failed lines say
            batches = (await api.call("GET", "/v1/batches", params={"limit": 1})).json()["data"]
            if batches and batches[0].get("error_file_id"):
                errors = await api.call("GET", f"/v1/files/{batches[0]['error_file_id']}/content")
                exc.message += f"; the first errors: {errors.text[:1500]}"
            raise


def main() -> int:
    args = build_parser().parse_args()
    try:
        medians, batches = asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench_scale: {exc.message}\n{exc.output[-3000:]}", file=sys.stderr)
        return 1
    keys = "under a limited key" if args.limited else "no keys"
    print(f"\nstreaming chat, {args.requests} requests, {args.concurrency} at once, {args.max_tokens} tokens, "
          f"medians of {args.rounds} rounds, {keys}")  # fmt: skip
    print(f"{'target':<12} {'TTFT p50 ms':>12} {'tokens/s':>10} {'API CPU ms/request':>20}")
    for name, m in medians.items():
        print(f"{name:<12} {m['ttft_p50_ms']:>12.1f} {m['tokens_per_s']:>10.0f} {m['api_cpu_ms_per_request']:>20.3f}")
    extra = medians["postgresql"]["api_cpu_ms_per_request"] - medians["sqlite"]["api_cpu_ms_per_request"]
    print(f"\nPostgreSQL vs SQLite: {extra:+.3f} ms of API CPU per request (target: at most +0.3)")
    hop = medians["front"]["ttft_p50_ms"] - medians["postgresql"]["ttft_p50_ms"]
    print(f"forwarded through another instance: TTFT p50 {hop:+.1f} ms, "
          f"{medians['front']['api_cpu_ms_per_request']:.3f} ms of the front instance's CPU per request")  # fmt: skip
    if batches.one is not None and batches.two is not None:
        print(f"\nbatch of {args.batch_lines} completions, {args.batch_tokens} tokens each, created on one instance")
        print(f"{'served by':<16} {'seconds':>9} {'lines/s':>9} {'tokens/s':>10}")
        for label, b in (("one instance", batches.one), ("two instances", batches.two)):
            print(f"{label:<16} {b.elapsed_s:>9.2f} {b.lines / b.elapsed_s:>9.1f} {b.tokens_per_s:>10.0f}")
        print(f"two instances vs one: {batches.two.tokens_per_s / batches.one.tokens_per_s:.2f}x the tokens/s, lines "
              f"run {batches.split[0]} + {batches.split[1]} (both instances on this machine's cores)")  # fmt: skip
    if args.json:
        figures = {"streaming": medians, "batch": dataclasses.asdict(batches)}
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
