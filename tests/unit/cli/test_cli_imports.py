"""What `bitinglip --help`, `ps` and `run` import, in a fresh interpreter: none of the server's heavy packages.

A check on `sys.modules`, not on time, so it cannot flake on a busy machine; docs/cli.md has the times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Never on a client command's path: the engine, the server, the database, the hub.
HEAVY = (
    "vllm",
    "torch",
    "transformers",
    "litestar",
    "uvicorn",
    "sqlalchemy",
    "huggingface_hub",
    "bitinglip.app",
    "bitinglip.cluster",
    "bitinglip.gateway",
    "bitinglip.interfaces",
    "bitinglip.models",
    "bitinglip.tasks",
)
# A stand-in server in the child process (the standard library's http.server, already imported by nothing of ours).
STAND_IN = """
import json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, body, kind="application/json"):
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(json.dumps({"object": "list", "data": [{"id": "tiny", "status": "ready"}]}))
        else:
            self._send(json.dumps({"object": "list", "data": []}))

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        event = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
        self._send(f"data: {json.dumps(event)}\\n\\ndata: [DONE]\\n\\n", "text/event-stream")

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}"
"""


def imported(body: str, **env: str) -> list[str]:
    """The heavy modules imported once ``body`` has run in a fresh interpreter (asserting what it asserts)."""
    code = f"{body}\nimport sys\nprint('heavy:', *(m for m in {HEAVY!r} if m in sys.modules))\n"
    environ = os.environ | env
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=environ)
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1].split()  # after what the command printed
    assert last[0] == "heavy:", done.stdout
    return last[1:]


def test_help_builds_the_parser_alone() -> None:
    body = (
        "from bitinglip.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "import sys\n"
        "light = [m for m in ('httpx', 'msgspec', 'dynaconf', 'structlog', 'asyncio') if m in sys.modules]\n"
        "assert not light, light  # what a command needs is imported when it runs\n"
    )
    assert imported(body) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["ps"],
        ["run", "tiny", "hello"],
        ["tasks", "list"],
        ["batches", "list"],
    ],
)
def test_client_commands_against_a_server(argv: list[str]) -> None:
    body = STAND_IN + f"from bitinglip.cli import main\nassert main([*{argv!r}, '--url', url]) == 0\n"
    assert imported(body) == []


@pytest.mark.parametrize("argv", [["ps"], ["run", "tiny", "hello"]])
def test_client_commands_without_a_server(argv: list[str]) -> None:
    body = f"from bitinglip.cli import main\nassert main([*{argv!r}, '--url', 'http://127.0.0.1:9']) == 1\n"
    assert imported(body) == []


def test_the_settings_url_path_too() -> None:
    """No --url: the server's address comes from the settings (dynaconf, msgspec), still none of the heavy ones."""
    body = "import os\nos.environ.pop('BITINGLIP_URL', None)\nfrom bitinglip.cli import main\n"
    body += "os.environ['BITINGLIP_SERVER__PORT'] = '9'\nassert main(['ps']) == 1\n"
    assert imported(body) == []


def test_models_list_and_show_read_the_registry_alone(tmp_path: Path) -> None:
    """On a database at this release's schema: SQLAlchemy and the `models` table, not the app (nor Litestar)."""
    home = {"BITINGLIP_HOME": str(tmp_path)}
    first = "from bitinglip.cli import main\nassert main(['models', 'list']) == 0\n"
    assert "bitinglip.app" in imported(first, **home)  # no file yet: made (and every table) the app's way
    registry_alone = ["sqlalchemy", "bitinglip.models"]  # the registry's module and table, nothing of the hub
    assert imported(first, **home) == registry_alone
    show = "from bitinglip.cli import main\nassert main(['models', 'show', 'ghost']) == 1\n"
    assert imported(show, **home) == registry_alone
