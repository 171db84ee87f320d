"""`bitinglip models ...`: commands that work on the registry directly, without a server.

`list` and `show` only read the registry: they open the database as it is (SQLAlchemy and the `models` table,
not the app, which imports every module and Litestar) when its schema is this release's, and go the app's way
(which creates or migrates it) otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bitinglip.cli.common import _duration, _size, _when, _with_components
from bitinglip.cli.tables import _json
from bitinglip.core import BitingLipError

if TYPE_CHECKING:  # the app imports every module (and, through the cluster, vLLM): only when a command needs it
    from bitinglip.app import Components
    from bitinglip.cli.common import Subcommands
    from bitinglip.models import ModelRegistry, PullStatus


class HasRegistry(Protocol):
    """What the reading commands need: the app's components, or the registry alone."""

    @property
    def registry(self) -> ModelRegistry: ...


class _RegistryOnly:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry


def _reading(work: Callable[[HasRegistry, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    """Run ``work`` on the registry alone when the database can be read as it is, else as `_with_components` does."""
    full = _with_components(work)

    def run(args: argparse.Namespace) -> int:
        import asyncio

        from bitinglip.core import Database, load_settings
        from bitinglip.models import ModelRegistry

        settings = load_settings().settings

        async def main() -> int | None:
            db = Database(settings.db)
            if not await db.open_current():
                return None
            try:
                return await work(_RegistryOnly(ModelRegistry(db, Path(settings.models.dir))), args)
            finally:
                await db.stop()

        code = asyncio.run(main())
        return full(args) if code is None else code

    return run


def _progress_line(status: PullStatus, width: int = 24) -> str:
    total, done = status.bytes_total, status.bytes_done
    if not total or status.state == "resolving":
        return f"{status.ref}: {status.state}"
    filled = min(width, done * width // total)
    bar = "#" * filled + "." * (width - filled)
    return (
        f"{status.ref} [{bar}] {100 * done / total:5.1f}%  {_size(done)}/{_size(total)}  "
        f"{_size(int(status.rate)) if status.rate else '-'}/s  left {_duration(status.eta_s)}  {status.state}"
    )


async def _create_tiny(components: Components, args: argparse.Namespace) -> int:
    if args.adapter_of:
        name = args.name or f"{args.adapter_of}-lora-{args.seed}"
        record = await components.models.create_tiny_adapter(name, args.adapter_of, seed=args.seed, rank=args.rank)
        print(
            f"{record.name}: {record.path} ({_size(record.size_bytes)}, a LoRA adapter of {record.base_model}, "
            f"rank {record.lora_rank}, random weights)"
        )
        return 0
    name = args.name or ("tiny-embed" if args.embedding else "tiny-think" if args.reasoning else "tiny")
    record = await components.models.create_tiny(
        name, if_missing=args.if_missing, embedding=args.embedding, reasoning=args.reasoning
    )
    size, params = _size(record.size_bytes), record.parameters
    kind = "an embedding model, " if args.embedding else "a reasoning model, " if args.reasoning else ""
    print(f"{record.name}: {record.path} ({size}, {params:,} parameters, {kind}random weights)")
    return 0


async def _list(components: HasRegistry, args: argparse.Namespace) -> int:
    records = await components.registry.list_models()
    if args.json:
        print(_json(records))
        return 0
    if not records:
        print("no models yet: `bitinglip models create-tiny` or `bitinglip models pull ORG/NAME`")
        return 0
    print(
        f"{'NAME':<32} {'STATE':<8} {'SIZE':>9} {'KIND':<22} {'ARCH':<24} {'CONTEXT':>7} {'SOURCE':<6} "
        f"{'REVISION':<20} LAST USED"
    )
    for r in records:
        revision = f"{r.revision or 'main'}@{r.commit_sha[:7]}" if r.commit_sha else "-"
        kind = f"adapter of {r.base_model}" if r.adapter else "model"
        print(
            f"{r.name:<32} {r.state:<8} {_size(r.size_bytes):>9} {kind:<22} {(r.architecture or '-'):<24} "
            f"{r.context_length or '-':>7} {r.source:<6} {revision:<20} {_when(r.last_used_at)}"
        )
    return 0


async def _show(components: HasRegistry, args: argparse.Namespace) -> int:
    record = await components.registry.require(args.name)
    import msgspec

    for key, value in msgspec.structs.asdict(record).items():
        print(f"{key:<15} {value if value is not None else '-'}")
    if not record.adapter and (adapters := await components.registry.adapters_of(record.name)):
        print(f"{'adapters':<15} {', '.join(a.name for a in adapters)}")
    return 0


async def _rm(components: Components, args: argparse.Namespace) -> int:
    record = await components.models.remove(args.name, force=args.force)
    print(f"removed {record.name} ({record.path})")
    return 0


async def _search(components: Components, args: argparse.Namespace) -> int:
    results = await components.models.search(args.query, limit=args.limit, sort=args.sort)
    if args.json:
        print(_json(results))
        return 0
    if not results:
        print(f"nothing on the hub matches {args.query!r}")
        return 0
    width = max(32, *(len(r.id) for r in results))
    print(f"{'ID':<{width}} {'DOWNLOADS':>10} {'LIKES':>6} {'TASK':<20} {'LAST MODIFIED':<16} SERVABLE")
    for r in results:
        servable = "?" if r.servable is None else ("yes" if r.servable else "no")
        modified = (r.last_modified or "-")[:16].replace("T", " ")
        counts = f"{r.downloads or 0:>10,} {r.likes or 0:>6,}"
        print(f"{r.id:<{width}} {counts} {(r.task or '-'):<20} {modified:<16} {servable}")
    return 0


async def _pull(components: Components, args: argparse.Namespace) -> int:
    pull = components.models.pull(args.ref, args.allow or None, args.ignore or None, args.base)
    tty = sys.stderr.isatty()
    # On a terminal one line redrawn in place; in a log, one line every few seconds.
    every, last = (0.2, 0.0) if tty else (5.0, 0.0)
    import asyncio

    loop = asyncio.get_running_loop()
    try:
        while not await pull.wait(every if tty else 0.5):
            if loop.time() - last >= every:
                last = loop.time()
                line = _progress_line(pull.status())
                print(f"\r{line}\x1b[K" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    except asyncio.CancelledError:  # Ctrl-C
        print(
            f"\ninterrupted: what was downloaded is kept; `bitinglip models pull {args.ref}` resumes it",
            file=sys.stderr,
        )
        raise
    status = pull.status()
    if tty:
        print(f"\r{_progress_line(status)}\x1b[K", file=sys.stderr)
    if status.state != "ready":
        raise pull.exception or BitingLipError(f"pull of {args.ref} ended {status.state}")
    if status.up_to_date:
        print(f"{status.model} is already up to date ({status.revision or 'main'} = {status.commit_sha})")
    else:
        print(
            f"pulled {status.model} {status.revision or 'main'} = {status.commit_sha} into {status.path}"
            f" ({_size(status.bytes_total)}, {_size(status.resumed_bytes)} resumed)"
        )
    return 0


async def _import(components: Components, args: argparse.Namespace) -> int:
    record = await components.models.import_dir(Path(args.path), args.name, args.base)
    what = f"a LoRA adapter of {record.base_model}, rank {record.lora_rank}" if record.adapter else record.architecture
    print(f"imported {record.name} from {record.path} ({what}, {_size(record.size_bytes)})")
    return 0


def add_commands(sub: Subcommands) -> None:
    models = sub.add_parser("models", help="the local model registry").add_subparsers(dest="action", required=True)
    tiny = models.add_parser("create-tiny", help="build the tiny random-weight model used offline and in tests")
    tiny.add_argument("--name", help="default: tiny, tiny-embed with --embedding, tiny-think with --reasoning")
    variant = tiny.add_mutually_exclusive_group()
    variant.add_argument("--embedding", action="store_true", help="an embedding model (serves /v1/embeddings)")
    variant.add_argument(
        "--reasoning", action="store_true", help="a reasoning model: <think>...</think> first (vLLM's deepseek_r1)"
    )
    variant.add_argument(
        "--adapter-of",
        metavar="BASE",
        help="a random LoRA adapter of the registered model BASE (default name BASE-lora-SEED)",
    )
    tiny.add_argument("--seed", type=int, default=1, help="with --adapter-of: its random weights' seed")
    tiny.add_argument("--rank", type=int, default=8, help="with --adapter-of: its LoRA rank")
    tiny.add_argument("--if-missing", action="store_true", help="do nothing if it exists, is ready and up to date")
    tiny.set_defaults(func=_with_components(_create_tiny))
    search = models.add_parser("search", help="find models on the hub")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=20)
    search.add_argument("--sort", choices=["downloads", "likes", "last_modified", "trending"], default="downloads")
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=_with_components(_search))
    pull = models.add_parser("pull", help="download ORG/NAME[@REVISION] from the hub (resumes an interrupted pull)")
    pull.add_argument("ref", metavar="ORG/NAME[@REVISION]")
    pull.add_argument("--allow", action="append", metavar="PATTERN", help="only files matching (repeatable)")
    pull.add_argument("--ignore", action="append", metavar="PATTERN", help="skip files matching (repeatable)")
    pull.add_argument("--base", help="a LoRA adapter's base model (default: the registered model its config names)")
    pull.set_defaults(func=_with_components(_pull))
    lst = models.add_parser("list", help="list local models")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_reading(_list))
    shw = models.add_parser("show", help="show one model")
    shw.add_argument("name")
    shw.set_defaults(func=_reading(_show))
    rm = models.add_parser("rm", help="remove a model and its files (a base with adapters: only with --force)")
    rm.add_argument("name")
    rm.add_argument("--force", action="store_true")
    rm.set_defaults(func=_with_components(_rm))
    imp = models.add_parser("import", help="register a local model directory, or a LoRA adapter's (PEFT layout)")
    imp.add_argument("path")
    imp.add_argument("--name")
    imp.add_argument("--base", help="an adapter's base model (default: the registered model its config names)")
    imp.set_defaults(func=_with_components(_import))
