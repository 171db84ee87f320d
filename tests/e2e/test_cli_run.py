"""`bitinglip run` against the real server: a conversation through a real pseudo-terminal (pexpect), one answer
with a PROMPT or piped stdin, a model the server lacks, and, on a server of its own with auth on, a model loaded
on demand with its progress, with an inference key and an admin key. Also `tasks submit --wait`'s output.

The tiny model has random weights: only what is deterministic is asserted (temperature 0 gives the same answer to
the same messages; token counts match /tokenize's)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from e2e.conftest import BIN, MODEL, Server, make_key, start_server, stop_server

pytestmark = pytest.mark.e2e

TURN_TIMEOUT_S = 120  # an answer of a few tokens takes well under a second; a busy machine, more
UP = "\x1b[A"  # the terminal's up arrow


def client_env(server: Server, home: Path, **extra: str) -> dict[str, str]:
    """The server's settings (so the CLI finds its address there, with no --url), a home of the client's own
    (its history file), and a terminal that draws nothing fancy."""
    return server.env | {"BITINGLIP_HOME": str(home), "TERM": "dumb"} | extra


def spawn(env: dict[str, str], *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        str(BIN), list(args), env=env, encoding="utf-8", codec_errors="replace", timeout=TURN_TIMEOUT_S,
        preexec_fn=_sigint_default,
    )  # fmt: skip


def _sigint_default() -> None:
    """Ctrl-C as at a terminal: a suite started in the background (`cmd &` in a script) has SIGINT ignored, and a
    child would inherit that and never see the ^C the tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def prompt_tokens(server: Server, messages: list[dict[str, str]], model: str = MODEL) -> int:
    """What the server counts for these messages, from its own tokenizer (POST /tokenize)."""
    r = httpx.post(f"{server.url}/tokenize", json={"model": model, "messages": messages}, timeout=60)
    assert r.status_code == 200, r.text
    count: int = r.json()["count"]
    return count


def answer_of(server: Server, text: str, **sampling: Any) -> str:
    reply = server.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **sampling
    )
    return reply.choices[0].message.content or ""


def printed(answer: str) -> bytes:
    """What `run` prints for an answer: the answer, with a newline after it if it has none."""
    return (answer if answer.endswith("\n") else answer + "\n").encode()


def answered(child: pexpect.spawn, tokens: int = 12) -> str:
    """What the terminal showed from the line sent to the end of the answer; then the answer's figures (--verbose)
    and the next prompt."""
    child.expect_exact("total duration:")
    shown: str = child.before
    child.expect(rf"completion tokens:\s+{tokens}\r\n")
    child.expect_exact(">>> ")
    return shown


def test_a_conversation_on_a_terminal(server: Server, tmp_path: Path) -> None:
    child = spawn(client_env(server, tmp_path), "run", MODEL)
    try:
        child.expect_exact(">>> ")
        for line in ("/set parameter temperature 0", "/set parameter max_tokens 12", "/set verbose"):
            child.sendline(line)
            child.expect_exact(">>> ")

        child.sendline("Hello")  # the answer streams, then its figures (--verbose)
        first = answered(child)
        child.sendline("/clear")
        child.expect_exact("Cleared the conversation.")
        child.expect_exact(">>> ")
        child.sendline("Hello")  # the same messages at temperature 0: the same answer
        assert answered(child) == first

        child.sendline("/clear")
        child.expect_exact(">>> ")
        child.send(UP + UP + "\r")  # history: "Hello" again, two lines up
        assert answered(child).split("\r\n", 1)[1] == first.split("\r\n", 1)[1]  # after the echoed line

        child.sendline("/clear")
        child.expect_exact(">>> ")
        child.sendline('"""first line')  # a block of lines: one message
        child.expect_exact("... ")
        child.sendline('second line"""')
        child.expect(r"prompt tokens:\s+(\d+)\r\n")
        sent = int(child.match.group(1))
        assert sent == prompt_tokens(server, [{"role": "user", "content": "first line\nsecond line"}])
        child.expect_exact(">>> ")

        child.sendline("/show info")
        child.expect(r"messages\s+2\r\n")  # the block and its answer
        child.expect_exact(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    history = (tmp_path / "run_history").read_text().splitlines()
    assert history[:4] == ["/set parameter temperature 0", "/set parameter max_tokens 12", "/set verbose", "Hello"]
    assert '"""first line' in history and history[-1] == "/bye"


def test_ctrl_c_stops_an_answer_and_the_conversation_goes_on(server: Server, tmp_path: Path) -> None:
    child = spawn(client_env(server, tmp_path), "run", MODEL)
    try:
        child.expect_exact(">>> ")
        for line in ("/set parameter max_tokens 1500", "/set parameter min_tokens 1500"):
            child.sendline(line)
            child.expect_exact(">>> ")
        child.sendline("tell me a story")
        child.expect("story\r\n.{20}")  # the answer has begun (1500 tokens take seconds)
        child.sendintr()
        child.expect_exact("^C (stopped)")
        child.expect_exact(">>> ")
        child.sendline("/show info")
        child.expect(r"messages\s+2\r\n")  # the question and the part of the answer written
        child.expect_exact(">>> ")
        child.sendintr()  # at the prompt: a hint, not an exit
        child.expect_exact("Use Ctrl + d or /bye to exit.")
        child.expect_exact(">>> ")
        child.sendeof()  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def run_once(server: Server, home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`bitinglip run` as a script runs it: no terminal, the answer's bytes as they are (no newline translation)."""
    env = client_env(server, home)
    return subprocess.run(
        [str(BIN), "run", *args],
        env=env,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=TURN_TIMEOUT_S,
    )


def test_one_answer_with_a_prompt(server: Server, tmp_path: Path) -> None:
    sampling = {"temperature": 0, "max_tokens": 12}
    done = run_once(server, tmp_path, MODEL, "-p", "temperature=0", "-p", "max_tokens=12", "Hello", "there")
    assert (done.returncode, done.stderr) == (0, b"")  # served already: no progress line
    assert done.stdout == printed(answer_of(server, "Hello there", **sampling))  # the answer alone


def test_one_answer_to_piped_text(server: Server, tmp_path: Path) -> None:
    sampling = {"temperature": 0, "max_tokens": 8}
    flags = ["-p", "temperature=0", "-p", "max_tokens=8"]
    done = run_once(server, tmp_path, MODEL, *flags, stdin=b"some text piped in\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed(answer_of(server, "some text piped in", **sampling))

    # the piped text, then the PROMPT, as one message: what the server counted says so
    done = run_once(server, tmp_path, MODEL, *flags, "--verbose", "summarize", stdin=b"some text piped in\n")
    assert done.returncode == 0, done.stderr
    counted = re.search(rb"prompt tokens:\s+(\d+)", done.stderr)
    assert counted is not None, done.stderr
    message = [{"role": "user", "content": "some text piped in\n\nsummarize"}]
    assert int(counted.group(1)) == prompt_tokens(server, message)
    assert done.stdout == printed(answer_of(server, "some text piped in\n\nsummarize", **sampling))


def test_a_model_the_server_lacks(server: Server, tmp_path: Path) -> None:
    done = run_once(server, tmp_path, "org/ghost", "hi")
    assert (done.returncode, done.stdout) == (1, b"")
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and "'org/ghost' is not on the server" in lines[0]
    assert "`bitinglip models pull org/ghost`" in lines[0] and MODEL in lines[0]


def test_a_server_error_is_one_line(server: Server, tmp_path: Path) -> None:
    done = run_once(server, tmp_path, MODEL, "-p", "max_tokens=100000", "hi")
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode().startswith("bitinglip: This model's maximum context length is 2048 tokens.")
    assert done.stderr.count(b"\n") == 1


def test_tasks_submit_wait_prints_the_text_then_the_id_and_usage(server: Server) -> None:
    out = server.cli("tasks", "submit", "--model", MODEL, "--prompt", "Hello", "--max-tokens", "5", "--wait")
    assert out.returncode == 0, out.stderr
    summary = out.stderr.splitlines()[-1]
    match = re.fullmatch(r"(task_\w+) succeeded, (\d+) prompt \+ (\d+) completion tokens, ran \d+\.\d s", summary)
    assert match is not None, out.stderr
    shown = json.loads(server.cli("tasks", "show", match.group(1), "--json").stdout)
    # Sampled from random weights: the answer may end at EOS before its 5 tokens.
    assert 1 <= int(match.group(3)) <= 5
    assert shown["result"]["usage"]["prompt_tokens"] == int(match.group(2))
    assert shown["result"]["usage"]["completion_tokens"] == int(match.group(3))
    assert out.stdout == shown["result"]["choices"][0]["message"]["content"] + "\n"  # the text alone on stdout


# -- a server of its own: auth on, the tiny model registered and loaded on the first request


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[Server, str, str]]:
    """A server with auth on and nothing declared: `tiny` is registered, loaded when a request names it. An admin
    key and an inference key, made by the CLI before it started."""
    home = tmp_path_factory.mktemp("run-guarded")
    env = os.environ | {"BITINGLIP_HOME": str(home), "BITINGLIP_ENV": "test"}
    imported = subprocess.run(
        [str(BIN), "models", "import", str(tiny_model_dir), "--name", "tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    admin = make_key(env, "--name", "ops", "--scope", "admin")
    user = make_key(env, "--name", "user", "--models", "tiny")
    srv = start_server(home, "", BITINGLIP_GATEWAY__AUTH="true", BITINGLIP_CLUSTER__KV_CACHE_GIB="0.25")
    yield srv, admin, user
    stop_server(srv)


def test_with_auth_on_the_key_comes_from_the_environment(guarded: tuple[Server, str, str], tmp_path: Path) -> None:
    server, admin, user = guarded
    refused = run_once(server, tmp_path, "tiny", "hi")  # no key
    assert (refused.returncode, refused.stdout) == (1, b"")
    assert len(refused.stderr.splitlines()) == 1 and b"key" in refused.stderr.lower()

    # An inference key may not read /api/deployments: the progress is the time alone; the model loads on demand.
    env = client_env(server, tmp_path, BITINGLIP_API_KEY=user)
    done = subprocess.run(
        [str(BIN), "run", "tiny", "-p", "max_tokens=4", "hi"], env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    stderr = done.stderr.decode()
    assert "loading tiny... 0 s" in stderr and "starting the engine" not in stderr, stderr
    assert user not in stderr and done.stdout.strip()
    log = server.log()
    assert "deployment.on_demand" in log

    # The admin key reads the deployment's state: on a terminal, one line redrawn in place, erased when ready.
    ps = subprocess.run([str(BIN), "ps"], env=env | {"BITINGLIP_API_KEY": admin}, capture_output=True, text=True)
    assert ps.returncode == 0 and "tiny" in ps.stdout, ps.stderr  # every client command sends the key
    gone = subprocess.run(
        [str(BIN), "undeploy", "tiny"], env=env | {"BITINGLIP_API_KEY": admin}, capture_output=True, timeout=300
    )
    assert gone.returncode == 0, gone.stderr
    child = spawn(env | {"BITINGLIP_API_KEY": admin}, "run", "tiny", "-p", "max_tokens=4", "hi")
    try:
        child.expect(r"loading tiny\.\.\. (resolving the model|starting the engine), \d+ s", timeout=300)
        child.expect(pexpect.EOF, timeout=300)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert "\r\x1b[K" in child.before  # the progress line erased before the answer
