"""`bitinglip serve`: the server in the foreground, and no engine process left behind when it stops."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bitinglip.cli.common import _overrides
from bitinglip.core import InvalidInput

if TYPE_CHECKING:
    from bitinglip.cli.common import Subcommands
    from bitinglip.core import LoadedSettings


def _cmdline(process: Any) -> list[str]:
    import psutil

    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


def _alive(process: Any) -> bool:
    """Running, not a zombie waiting to be reaped (whose command line cannot be read either)."""
    import psutil

    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _kill_children(grace_s: float = 10.0) -> list[int]:
    """Last line of defence: no engine process may outlive the server."""
    import psutil

    # multiprocessing's resource tracker ignores SIGTERM and leaves by itself once we exit, as the engines' fork
    # server does: not ours to wait for. What the fork server forked (engine cores) is.
    helpers = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
    children = [
        child
        for child in psutil.Process().children(recursive=True)
        if not any(helper in " ".join(_cmdline(child)) for helper in helpers) and _alive(child)
    ]
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    return [c.pid for c in children]


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would kill the process
            # before we reap leftover engine processes and make a clean stop look like a crash (-15).
            # SIGHUP (the terminal went away) stops the server the same graceful way.
            stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def serve_settings(args: argparse.Namespace) -> LoadedSettings:
    """The settings `serve` runs with: the layers, then the command line. ``--model X`` serves X alone: it
    replaces every deployment the settings declare (`cluster.deployments`, and `cluster.embedding_model` beside
    `cluster.model`), as a user who names one model expects; "" declares none. `serve X` (as `vllm serve X`) is
    the same as `--model X`."""
    from bitinglip.core import configure_logging, load_settings

    model = served_model(args)
    overrides = _overrides(args)
    if model is not None:
        overrides["cluster"] = {"model": model, "embedding_model": "", "deployments": []}
    loaded = load_settings(overrides)
    configure_logging(loaded.settings.server, loaded.settings.env)
    return loaded


def served_model(args: argparse.Namespace) -> str | None:
    """The model named on the command line: positional or --model (both: the same one)."""
    given: str | None = getattr(args, "served", None)
    option: str | None = args.model
    if given is not None and option is not None and given != option:
        raise InvalidInput(f"two models given: {given} and --model {option}; name one", param="model")
    return given if given is not None else option


def cmd_serve(args: argparse.Namespace) -> int:
    # vLLM's own log handler would print a second format; its loggers propagate to ours instead.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    loaded = serve_settings(args)  # bad settings or two models are refused before the app's imports (seconds)
    from bitinglip.cluster import start_fork_server

    # Engine cores are forked from it; it imports vLLM while the server does (on the CPU build).
    start_fork_server(loaded.settings.cluster)
    import uvicorn

    from bitinglip.app import create_app
    from bitinglip.cli.http_protocol import header_deadline
    from bitinglip.core import get_logger

    log = get_logger("bitinglip.cli")
    settings = loaded.settings
    app = create_app(loaded)
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.server.keep_alive_s,
        http=header_deadline(settings.server.header_timeout_s),
        # Nothing reads the client's address (limits are per key), so X-Forwarded-* rewriting is work for nothing:
        # one more middleware layer on every request.
        proxy_headers=False,
    )
    server = _server_class()(config)
    cluster = settings.cluster
    log.info(
        "server.starting",
        url=f"http://{settings.server.host}:{settings.server.port}",
        deployments=[d.name or d.model for d in cluster.deployments]
        or [m for m in (cluster.model, cluster.embedding_model) if m]
        or None,
        env=settings.env,
        openai_base_url=f"http://{settings.server.host}:{settings.server.port}/v1",
    )
    server.run()
    leftovers = _kill_children()
    if leftovers:
        log.warning("server.killed_leftover_processes", pids=leftovers)
    if not server.started:
        log.error("server.exit", reason="the server did not start", code=1)
        return _exit_process(1)
    log.info("server.exit", code=0)
    return _exit_process(0)


def _exit_process(code: int) -> int:
    """End the process without the interpreter's teardown, once every component has stopped and said so.

    What teardown has left to do then is free modules one by one: it took seconds, and triton's bindings (imported
    by vLLM) print nanobind's "leaked 514 functions!" notes on the way out, which read like a crash. One thing of
    that teardown is done here: multiprocessing's removal of its folder, where the engines' fork server's socket is
    (the fork server leaves by itself as this process ends)."""
    from bitinglip.cluster import remove_fork_server_folder

    remove_fork_server_folder()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def add_commands(sub: Subcommands) -> None:
    serve = sub.add_parser(
        "serve",
        help="start the server (OpenAI API on /v1)",
        description="Start the server in the foreground. `bitinglip serve ORG/NAME` serves that model alone, as "
        "`vllm serve ORG/NAME` does (pulled first if it is not in the registry); without a model, the deployments "
        "the settings declare.",
    )
    serve.add_argument(
        "served",
        nargs="?",
        metavar="MODEL",
        help="serve this model alone (a registry name, local model directory or hub id ORG/NAME): it replaces the "
        "deployments the settings declare (cluster.model, cluster.embedding_model, cluster.deployments); "
        '"" for none, every registered model then loading on its first request',
    )
    serve.add_argument("--host", help="address to listen on (server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (server.port)")
    serve.add_argument("--model", help="the same as MODEL (kept for scripts written before MODEL)")
    serve.set_defaults(func=cmd_serve)
