"""`bitinglip ps | deploy | undeploy | cluster devices`: clients of a running server's /api, over HTTP.

They never import the app (and so never vLLM or Litestar), and import httpx and the settings only when they run:
`bitinglip ps` takes about 0.3 s (docs/cli.md has the figures). What every such client shares (`Api`,
`server_url`, `_poll`, the --url and --json options) is here too: cli/tasks.py, cli/batches.py and cli/run.py use
it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from bitinglip.cli.tables import (
    _deployments_table,
    _devices,
    _devices_table,
    _elapsed,
    _instances_table,
    _memory,
    _print_json,
)
from bitinglip.core import BitingLipError

if TYPE_CHECKING:  # httpx takes 0.1 s to import: only when a command talks to the server
    import httpx

    from bitinglip.cli.common import Subcommands

URL_ENV = "BITINGLIP_URL"
KEY_ENV = "BITINGLIP_API_KEY"  # sent as `Authorization: Bearer` when set (a server with auth on wants one)
CONNECT_TIMEOUT_S = 3.0
REQUEST_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.5
LOG_EVERY_S = 5.0  # progress lines when stderr is not a terminal


def _client(url: str) -> httpx.Client:
    import httpx

    return httpx.Client(base_url=url, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))


# Every command gets its client here: tests put one on an httpx.MockTransport in its place.
client_factory: Callable[[str], httpx.Client] = _client


def server_url(args: argparse.Namespace) -> str:
    """--url, else $BITINGLIP_URL, else the server the settings describe (a wildcard address reached on loopback)."""
    given = getattr(args, "url", None) or os.environ.get(URL_ENV)
    if given:
        return str(given).rstrip("/")
    from bitinglip.core import load_settings

    server = load_settings().settings.server
    host = "127.0.0.1" if server.host in ("", "0.0.0.0", "::", "[::]") else server.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{server.port}"


class Api:
    """The server's /api, with its error envelope turned into a `BitingLipError` carrying the server's message."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = client_factory(url)
        if key := os.environ.get(KEY_ENV, "").strip():
            self.client.headers["Authorization"] = f"Bearer {key}"

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def request(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False, **send: Any) -> Any:
        """The decoded JSON answer; None for a 404 when ``missing_ok``. ``send`` goes to httpx as it is: params=,
        or files= and data= for a multipart form (then no ``body``)."""
        with self._reaching(method, path):
            response = self.client.request(method, path, json=body, **send)
        if response.status_code == 404 and missing_ok:
            return None
        if response.is_error:
            raise BitingLipError(_error_message(response))
        try:
            return response.json()
        except ValueError as exc:
            raise BitingLipError(f"{method} {self.url}{path}: the answer is not JSON: {response.text[:200]!r}") from exc

    @contextlib.contextmanager
    def stream(self, method: str, path: str) -> Iterator[httpx.Response]:
        """The answer with its body unread, for one too big to hold (a file's content): iterate its bytes."""
        with self._reaching(method, path), self.client.stream(method, path) as response:
            if response.is_error:
                response.read()
                raise BitingLipError(_error_message(response))
            yield response

    @contextlib.contextmanager
    def _reaching(self, method: str, path: str) -> Iterator[None]:
        """httpx's connection and transport errors as a `BitingLipError` that says what to do."""
        import httpx

        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise BitingLipError(f"no server at {self.url} (start one with `bitinglip serve` or `make run`)") from exc
        except httpx.TransportError as exc:
            raise BitingLipError(f"{method} {self.url}{path} failed: {exc or type(exc).__name__}") from exc


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (ValueError, AttributeError):
        pass
    text = response.text.strip()[:200]
    return f"{response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")


# -- waiting


def _path(name: str) -> str:
    return f"/api/deployments/{quote(name, safe='')}"


class _Progress:
    """One line redrawn in place on a terminal; in a log, one line every few seconds."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last: float | None = None
        self.drawn = False

    def show(self, line: str) -> None:
        if self.tty:
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
            self.drawn = True
        elif self.last is None or time.monotonic() - self.last >= LOG_EVERY_S:
            self.last = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.drawn:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
            self.drawn = False


def _poll(
    api: Api,
    path: str,
    step: Callable[[Any, float], str | None],
    *,
    timeout_s: float = math.inf,
    name: str = "",
    missing_ok: bool = False,
) -> Any:
    """GET ``path`` every POLL_INTERVAL_S until ``step(answer or None when gone, elapsed)`` says stop (None) and
    return the last answer; otherwise ``step`` returns the progress line to show. Times out with a
    `BitingLipError` that says ``name`` is still in its state."""
    progress = _Progress()
    start = time.monotonic()
    try:
        while True:
            current = api.request("GET", path, missing_ok=missing_ok)
            elapsed = time.monotonic() - start
            line = step(current, elapsed)
            if line is None:
                return current
            if elapsed >= timeout_s:
                progress.done()
                raise BitingLipError(f"{name} is still {current['state'] if current else 'there'} after {timeout_s:g}s")
            progress.show(line)
            time.sleep(POLL_INTERVAL_S)
    finally:
        progress.done()


# -- commands


def cmd_ps(args: argparse.Namespace) -> int:
    with Api(server_url(args)) as api:
        deployments = api.request("GET", "/api/deployments")["data"]
        # Other instances on the same database; a server from before they were listed answers 404.
        instances = (api.request("GET", "/api/cluster/instances", missing_ok=True) or {}).get("data", [])
    if args.json:
        _print_json(deployments)
        return 0
    if not deployments:
        print("nothing deployed: `bitinglip deploy MODEL` loads one")
    else:
        print(_deployments_table(deployments))
    if len(instances) > 1:
        print(f"\n{len(instances)} instances on this database (* this one):")
        print(_instances_table(instances, time.time()))
    return 0


def _devices_arg(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"GPU indices separated by commas, like 0,1 (not {value!r})") from None


def _keep_alive_arg(value: str) -> float | int | str:
    """300 and -1 travel as numbers (seconds), 5m/30s/1h as they are: the server parses durations."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _engine_arg(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"KEY=VALUE, like max_model_len=4096 (not {value!r})")
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return key.strip().replace("-", "_"), parsed  # vLLM's command-line spelling works too


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": args.model}
    for key in ("name", "devices", "device_count", "replicas", "keep_alive"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if args.engine:
        spec["engine"] = dict(args.engine)
    return spec


def _summary(status: dict[str, Any]) -> str:
    replicas = len(status.get("replicas") or [])
    on = _devices(status) + (f", {replicas} replicas" if replicas > 1 else "")
    keep = status.get("keep_alive_s")
    unloads = "never unloads" if keep is None else f"unloads after {_elapsed(keep)} idle"
    return f"{status['name']} is ready: {status['model']} on {on}, {_memory(status)}, {unloads}"


def cmd_deploy(args: argparse.Namespace) -> int:
    with Api(server_url(args)) as api:
        status = api.request("POST", "/api/deployments", _spec(args))
        name = status["name"]
        if not args.no_wait and status.get("state") != "ready":

            def step(current: dict[str, Any] | None, elapsed: float) -> str | None:
                if current is None:
                    raise BitingLipError(f"{name} went away while loading (undeployed?)")
                if current["state"] == "loading":
                    return f"loading {name} … {_elapsed(current.get('loading_for_s') or elapsed)}"
                return None

            try:
                status = _poll(api, _path(name), step, timeout_s=args.timeout, name=name, missing_ok=True) or status
            except KeyboardInterrupt:
                print(
                    f"{name} goes on loading on the server: `bitinglip ps` shows it, "
                    f"`bitinglip undeploy {name}` stops it",
                    file=sys.stderr,
                )
                raise
    if args.json:
        _print_json(status)
    state = status.get("state")
    if state == "failed" or (not args.no_wait and state != "ready"):
        raise BitingLipError(f"{name} {state}: {status.get('reason') or 'no reason given'}")
    if not args.json:
        print(f"deploying {name} ({status['model']})" if state == "loading" else _summary(status))
    return 0


def cmd_undeploy(args: argparse.Namespace) -> int:
    name = args.name
    with Api(server_url(args)) as api:
        api.request("DELETE", _path(name))
        if args.no_wait:
            print(f"undeploying {name}")
            return 0

        def step(current: dict[str, Any] | None, elapsed: float) -> str | None:
            return None if current is None else f"{current['state']} {name} … {_elapsed(elapsed)}"

        _poll(api, _path(name), step, timeout_s=args.timeout, name=name, missing_ok=True)
    print(f"undeployed {name}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    with Api(server_url(args)) as api:
        devices = api.request("GET", "/api/cluster/devices")
    if args.json:
        _print_json(devices)
    else:
        print(_devices_table(devices))
    return 0


def _options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The --url and --json options of every command that is a client of the server, as argparse parents."""
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url",
        help=f"the server (default: ${URL_ENV}, else http://HOST:PORT from the server.host/server.port settings)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="the server's JSON")
    return url, as_json


def add_commands(sub: Subcommands) -> None:
    url, as_json = _options()
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument("--no-wait", action="store_true", help="return once the server has taken the request")
    wait.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="give up waiting after S seconds (default %(default)g)",
    )

    ps = sub.add_parser("ps", parents=[url, as_json], help="what the server has deployed")
    ps.set_defaults(func=cmd_ps)

    deploy = sub.add_parser(
        "deploy",
        parents=[url, wait, as_json],
        help="load a model on the server and wait until it is ready",
        description="Load MODEL on the running server and wait until it serves (exit 1 if it fails).",
    )
    deploy.add_argument("model", metavar="MODEL", help="registry name, local model directory or hub id")
    deploy.add_argument("--name", help="the name clients send as `model` (default: derived from MODEL)")
    deploy.add_argument("--devices", type=_devices_arg, metavar="0,1", help="GPU indices to run on")
    deploy.add_argument("--device-count", type=int, metavar="K", help="any K GPUs, picked by the server")
    deploy.add_argument("--replicas", type=int, metavar="R", help="engine copies (default 1)")
    deploy.add_argument(
        "--keep-alive",
        type=_keep_alive_arg,
        metavar="5m|300|-1",
        help="unload after this long idle (seconds, or 30s/5m/1h; -1 never; default from the settings)",
    )
    deploy.add_argument(
        "--engine",
        type=_engine_arg,
        action="append",
        metavar="KEY=VALUE",
        help="a vLLM engine argument, VALUE as JSON when it parses, else a string (repeatable)",
    )
    deploy.set_defaults(func=cmd_deploy)

    undeploy = sub.add_parser(
        "undeploy", parents=[url, wait], help="stop a deployment (after its requests in flight) and wait until gone"
    )
    undeploy.add_argument("name", metavar="NAME")
    undeploy.set_defaults(func=cmd_undeploy)

    cluster = sub.add_parser("cluster", help="the server's machine").add_subparsers(dest="action", required=True)
    devices = cluster.add_parser("devices", parents=[url, as_json], help="GPUs and the CPU: memory, use, temperature")
    devices.set_defaults(func=cmd_devices)
