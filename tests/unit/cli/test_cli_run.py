"""`bitinglip run` against a stand-in server (httpx.MockTransport): readiness and loading, one answer, the
conversation's commands (input() scripted), errors as one line, the key."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import URL, StandIn, error, ok, run, sent

from bitinglip.cli import chat as chat_module
from bitinglip.cli import repl
from bitinglip.cli import run as run_module
from bitinglip.cli.chat import Chat, Reply, parameter_value, stream_answer
from bitinglip.cli.cluster import Api
from bitinglip.core import BitingLipError

READY = ok({"object": "list", "data": [{"id": "tiny", "status": "ready"}, {"id": "tiny-embed", "status": "ready"}]})
ON_DEMAND = ok({"object": "list", "data": [{"id": "tiny", "status": "on_demand"}]})
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def sse(*events: dict[str, Any], done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return "".join(lines).encode()


def answer(*pieces: str, usage: dict[str, Any] | None = USAGE) -> httpx.Response:
    events = [chunk(role="assistant"), *(chunk(p) for p in pieces), chunk(finish="stop")]
    if usage:
        events.append({"object": "chat.completion.chunk", "choices": [], "usage": usage})
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=sse(*events))


@pytest.fixture
def tty_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdin is a terminal (as when nothing is piped in)."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BITINGLIP_HOME", str(tmp_path))
    return tmp_path


def script(monkeypatch: pytest.MonkeyPatch, *lines: str | BaseException) -> list[str]:
    """input() answers ``lines`` in turn (an exception is raised: KeyboardInterrupt, EOFError), then EOF; returns
    the prompts it was called with."""
    queue = list(lines)
    prompts: list[str] = []

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        if not queue:
            raise EOFError
        line = queue.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    monkeypatch.setattr(repl, "History", lambda path: NoHistory())
    return prompts


class NoHistory:
    def save(self) -> None:
        pass


def slow_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load takes 0.1 s (the stand-in answers at once), so the progress shows."""
    monkeypatch.setattr(run_module, "PROGRESS_EVERY_S", 0.01)
    original = run_module._until_loaded

    def slower(api: Api, model: str) -> None:
        time.sleep(0.1)
        original(api, model)

    monkeypatch.setattr(run_module, "_until_loaded", slower)


def chats(server: StandIn) -> list[dict[str, Any]]:
    return [json.loads(r.content) for r in server.requests if r.url.path == "/v1/chat/completions"]


# -- one answer


def test_one_answer_streams_the_text_alone_on_stdout(
    server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str]
) -> None:
    server.on("GET", "/v1/models", READY)
    server.on("POST", "/v1/chat/completions", answer("Hel", "lo", " there"))
    code, out, err = run(capsys, "run", "tiny", "-p", "temperature=0", "why", "is", "the", "sky", "blue", "--verbose")
    assert (code, out) == (0, "Hello there\n")
    assert "prompt tokens:        9" in err and "completion tokens:    3" in err
    body = sent(server, 1)
    assert body["messages"] == [{"role": "user", "content": "why is the sky blue"}]  # the words after an option too
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "tiny" and body["temperature"] == 0.0
    assert server.calls() == ["GET /v1/models", "POST /v1/chat/completions"]  # ready: nothing loaded first


def test_each_piece_is_written_as_it_arrives() -> None:
    stand_in = StandIn()
    stand_in.on("POST", "/v1/chat/completions", answer("a", "b", "c"))
    writes: list[str] = []

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    api = Api.__new__(Api)
    api.url, api.client = URL, stand_in.client(URL)
    reply = Reply()
    stream_answer(api, {"model": "tiny"}, reply, Out(), show_reasoning=False)
    assert writes == ["a", "b", "c"]
    assert (reply.text, reply.finish_reason, reply.usage) == ("abc", "stop", USAGE)


def test_a_reasoning_models_thinking_is_shown_dimmed_and_not_sent_back() -> None:
    stand_in = StandIn()
    events = [chunk(reasoning_content="hmm, "), chunk(reasoning_content="well"), chunk("Yes."), chunk(finish="stop")]
    stand_in.on("POST", "/v1/chat/completions", httpx.Response(200, content=sse(*events)))
    api = Api.__new__(Api)
    api.url, api.client = URL, stand_in.client(URL)
    chat, out = Chat("tiny-think"), io.StringIO()
    reply = chat.send(api, "Is it?", out, show_reasoning=True)
    assert out.getvalue() == f"{chat_module.DIM}hmm, well{chat_module.RESET}\n\nYes."
    assert (reply.reasoning, reply.text) == ("hmm, well", "Yes.")
    assert chat.messages[-1] == {"role": "assistant", "content": "Yes."}
    stand_in.on("POST", "/v1/chat/completions", httpx.Response(200, content=sse(*events)))
    quiet = io.StringIO()
    chat.send(api, "Is it?", quiet, show_reasoning=False)  # not on a terminal: the answer alone
    assert quiet.getvalue() == "Yes."


def test_piped_text_then_the_prompt(
    server: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server.on("GET", "/v1/models", READY)
    server.on("POST", "/v1/chat/completions", answer("ok"))
    monkeypatch.setattr("sys.stdin", io.StringIO("line one\nline two\n"))
    assert run(capsys, "run", "tiny", "summarize") == (0, "ok\n", "")
    assert sent(server, 1)["messages"][-1]["content"] == "line one\nline two\n\nsummarize"

    monkeypatch.setattr("sys.stdin", io.StringIO("just this\n"))
    assert run(capsys, "run", "tiny")[:2] == (0, "ok\n")
    assert sent(server, 3)["messages"][-1]["content"] == "just this"

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert run(capsys, "run", "tiny") == (1, "", "bitinglip: nothing to send: give a PROMPT, or pipe text in\n")


def test_system_prompt_and_keep_alive(server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/v1/models", READY)
    server.on("POST", "/v1/chat/completions", answer("ok"))
    assert run(capsys, "run", "tiny", "--system", "Be brief.", "--keepalive", "5m", "hi")[0] == 0
    body = sent(server, 1)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["keep_alive"] == "5m"


def test_a_model_neither_served_nor_registered(
    server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str]
) -> None:
    server.on("GET", "/v1/models", READY)
    code, out, err = run(capsys, "run", "ghost", "hi")
    assert (code, out) == (1, "")
    assert err == (
        f"bitinglip: model 'ghost' is not on the server at {URL} (it has: tiny, tiny-embed); "
        "`bitinglip models pull ORG/NAME` downloads one, which the server then loads on its first request\n"
    )
    assert "`bitinglip models pull org/ghost`" in run(capsys, "run", "org/ghost", "hi")[2]
    assert server.calls() == ["GET /v1/models"] * 2


def test_server_errors_are_one_line(server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/v1/models", READY)
    server.on("POST", "/v1/chat/completions", error(400, "`max_tokens` must be at least 1"))
    assert run(capsys, "run", "tiny", "hi") == (1, "", "bitinglip: `max_tokens` must be at least 1\n")
    # an error event in the stream, after some text
    events = sse(chunk("par"), {"error": {"message": "the engine died", "type": "server_error"}}, done=False)
    server.on("POST", "/v1/chat/completions", httpx.Response(200, content=events))
    assert run(capsys, "run", "tiny", "hi") == (1, "par", "bitinglip: the engine died\n")
    server.on("POST", "/v1/chat/completions", httpx.Response(200, content=b"data: {not json\n\n"))
    code, _, err = run(capsys, "run", "tiny", "hi")
    assert code == 1 and err.startswith("bitinglip: the server sent an event that is not JSON") and err.count("\n") == 1


def test_bad_parameters_fail_before_the_server_is_asked(
    server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "run", "tiny", "-p", "temperature=hot", "hi") == (
        1,
        "",
        "bitinglip: temperature must be a number from 0 to 2, not 'hot'\n",
    )
    assert run(capsys, "run", "tiny", "-p", "temperature", "hi")[2].startswith("bitinglip: --parameter takes NAME=")
    assert server.requests == []


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("temperature", "0", ("temperature", 0.0)),
        ("top_p", "0.9", ("top_p", 0.9)),
        ("max_tokens", "64", ("max_tokens", 64)),
        ("num_predict", "64", ("max_tokens", 64)),  # Ollama's name
        ("repeat_penalty", "1.1", ("repetition_penalty", 1.1)),
        ("seed", "-3", ("seed", -3)),
        ("stop", "###", ("stop", "###")),
    ],
)
def test_parameter_values(name: str, raw: str, expected: tuple[str, Any]) -> None:
    assert parameter_value(name, raw) == expected


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("temperature", "3", "temperature must be a number from 0 to 2, not '3'"),
        ("top_p", "0", "top_p must be a number above 0, at most 1, not '0'"),
        ("max_tokens", "1.5", "max_tokens must be a whole number, 1 or more, not '1.5'"),
        ("max_tokens", "0", "max_tokens must be a whole number, 1 or more, not '0'"),
        ("seed", "x", "seed must be a whole number (64-bit), not 'x'"),
        ("warmth", "1", "unknown parameter 'warmth'; parameters: temperature, top_p"),
    ],
)
def test_bad_parameter_values(name: str, raw: str, message: str) -> None:
    with pytest.raises(BitingLipError) as caught:
        parameter_value(name, raw)
    assert caught.value.message.startswith(message)


# -- loading first


def test_a_registered_model_loads_first_with_its_state_shown(
    server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_load(monkeypatch)
    loading = {"name": "tiny", "state": "loading", "reason": "starting the engine"}
    server.on("GET", "/v1/models", ON_DEMAND)
    server.on("GET", "/api/deployments/tiny", ok(loading))
    # the server's own wait ran out once (503 model_loading): asked again
    still = error(503, "model tiny is still loading (30 s so far); retry shortly", code="model_loading")
    server.on("POST", "/tokenize", still, ok({"count": 1, "max_model_len": 2048, "tokens": [1]}))
    monkeypatch.setattr(run_module, "LOAD_RETRY_S", 0.0)
    server.on("POST", "/v1/chat/completions", answer("ok"))
    code, out, err = run(capsys, "run", "tiny", "hi")
    assert (code, out) == (0, "ok\n")
    assert "loading tiny... starting the engine, 0 s\n" in err  # not a terminal: one line (then every few seconds)
    assert sent(server, server.calls().index("POST /tokenize")) == {"model": "tiny", "prompt": ""}
    assert server.calls().count("POST /tokenize") == 2 and server.calls()[-1] == "POST /v1/chat/completions"


def test_without_the_admin_scope_the_progress_is_the_time_alone(
    server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_load(monkeypatch)
    server.on("GET", "/v1/models", ON_DEMAND)
    server.on("GET", "/api/deployments/tiny", error(403, "this key may not use /api/deployments"))
    server.on("POST", "/tokenize", ok({"count": 1}))
    server.on("POST", "/v1/chat/completions", answer("ok"))
    code, out, err = run(capsys, "run", "tiny", "hi")
    assert (code, out) == (0, "ok\n")
    assert "loading tiny... 0 s\n" in err and "403" not in err
    assert server.calls().count("GET /api/deployments/tiny") <= 1  # asked once, then not again


def test_a_load_that_fails_is_one_line(server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/v1/models", ON_DEMAND)
    server.on("GET", "/api/deployments/tiny", ok({"state": "failed", "reason": "no room"}))
    server.on("POST", "/tokenize", error(503, "model tiny is failed: no room on any device"))
    code, out, err = run(capsys, "run", "tiny", "hi")
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == "bitinglip: model tiny is failed: no room on any device"


# -- the key


def test_the_key_is_sent_and_never_shown(
    server: StandIn, tty_stdin: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BITINGLIP_API_KEY", "bl-secret-123")
    server.on("GET", "/v1/models", READY)
    server.on("POST", "/v1/chat/completions", error(401, "invalid API key"))
    code, out, err = run(capsys, "run", "tiny", "hi")
    assert (code, out, err) == (1, "", "bitinglip: invalid API key\n")
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer bl-secret-123"}
    server.on("GET", "/api/deployments", ok({"data": []}))
    assert run(capsys, "ps")[0] == 0  # every client command sends it
    assert server.requests[-1].headers["authorization"] == "Bearer bl-secret-123"


# -- the conversation


@pytest.fixture
def conversation(server: StandIn, tty_stdin: None, home: Path) -> StandIn:
    server.on("GET", "/v1/models", READY)
    server.on("POST", "/v1/chat/completions", answer("Hi!"))
    return server


def test_a_conversation_keeps_its_turns(
    conversation: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = script(monkeypatch, "hello", "", "again")
    code, out, err = run(capsys, "run", "tiny")
    assert (code, err) == (0, "")
    assert out == "Hi!\n\nHi!\n\n\n"  # each answer, a blank line; the newline after Ctrl-D
    assert prompts == [">>> "] * 4
    second = chats(conversation)[1]["messages"]
    assert second == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "again"},
    ]


def test_a_block_of_lines_is_one_message(
    conversation: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = script(monkeypatch, '"""first', "", "third", '"""', '"""one line"""', '"""', 'last"""')
    assert run(capsys, "run", "tiny")[0] == 0
    sent_texts = [c["messages"][-1]["content"] for c in chats(conversation)]
    assert sent_texts == ["first\n\nthird", "one line", "last"]
    assert prompts[:5] == [">>> ", "... ", "... ", "... ", ">>> "]


def test_set_show_clear(
    conversation: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script(
        monkeypatch,
        "/set parameter temperature 0",
        "/set parameter num_predict 16",
        "/set parameter stop ###",
        "/set system You are terse.",
        "hello",
        "/show",
        "/clear",
        "hello",
        "/unset parameter temperature",
        "/unset system",
        "/show parameters",
        "/bye",
        "never read",
    )
    code, out, err = run(capsys, "run", "tiny")
    assert (code, err) == (0, "")
    first, second = chats(conversation)
    assert first["temperature"] == 0.0 and first["max_tokens"] == 16 and first["stop"] == ["###"]
    assert first["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello"},
    ]
    assert second["messages"] == first["messages"]  # /clear forgot the first turn, kept the system prompt
    assert "Set parameter 'temperature' to 0.0." in out and "Set system message." in out
    assert "model       tiny\nserver      http://bitinglip.test:8000\nmessages    2\n" in out
    assert "system      'You are terse.'" in out and "Cleared the conversation." in out
    assert out.rstrip().endswith("parameters\n  max_tokens           16\n  stop                 ['###']")


def test_bad_commands_are_one_line_and_the_conversation_goes_on(
    conversation: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script(
        monkeypatch,
        "/set parameter temperature warm",
        "/set parameter bogus 1",
        "/set parameter top_p",
        "/set colour blue",
        "/frobnicate",
        "/show everything",
        "hello",
    )
    code, out, err = run(capsys, "run", "tiny")
    assert code == 0
    assert err.splitlines() == [
        "error: temperature must be a number from 0 to 2, not 'warm'",
        "error: unknown parameter 'bogus'; parameters: temperature, top_p, top_k, min_p, max_tokens, seed, "
        "presence_penalty, frequency_penalty, repetition_penalty, min_tokens, stop",
        "error: /set parameter top_p VALUE: which value?",
        "error: /set parameter NAME VALUE, /set system TEXT, /set verbose or /set quiet",
        "error: unknown command '/frobnicate': /? lists the commands",
        "error: /show info | system | parameters",
    ]
    assert "Hi!" in out and len(chats(conversation)) == 1


def test_a_server_error_leaves_the_conversation_as_it_was(
    conversation: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conversation.on("POST", "/v1/chat/completions", error(400, "too long"), answer("Hi!"))
    script(monkeypatch, "first", "second")
    code, out, err = run(capsys, "run", "tiny")
    assert (code, err, out) == (0, "error: too long\n", "Hi!\n\n\n")  # the second answer only
    assert chats(conversation)[1]["messages"] == [{"role": "user", "content": "second"}]


def test_ctrl_c_stops_an_answer_and_keeps_what_was_written(
    conversation: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted() -> Iterator[bytes]:
        yield sse(chunk("Once upon"), done=False)
        raise KeyboardInterrupt  # Ctrl-C while the next token is awaited

    conversation.on("POST", "/v1/chat/completions", httpx.Response(200, content=interrupted()), answer("The end."))
    script(monkeypatch, "tell me a story", KeyboardInterrupt(), "go on")
    code, out, err = run(capsys, "run", "tiny")
    assert (code, err) == (0, "")
    assert "Once upon\n^C (stopped)\n" in out
    assert "Use Ctrl + d or /bye to exit." in out  # Ctrl-C at the prompt does not leave
    assert chats(conversation)[1]["messages"][:2] == [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": "Once upon"},
    ]


def test_a_model_put_away_between_turns_loads_again_with_its_progress(
    conversation: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    slow_load(monkeypatch)
    put_away = ok({"object": "list", "data": [{"id": "tiny", "status": "stopped"}]})
    conversation.on("GET", "/v1/models", READY, READY, put_away, READY)  # at start, turn 1, turn 2, turn 3
    conversation.on("GET", "/api/deployments/tiny", ok({"state": "loading", "reason": "starting the engine"}))
    conversation.on("POST", "/tokenize", ok({"count": 1}))
    script(monkeypatch, "one", "two", "three")
    code, out, err = run(capsys, "run", "tiny")
    assert code == 0 and out.count("Hi!") == 3
    assert "loading tiny... starting the engine, 0 s" in err
    calls = conversation.calls()
    assert calls.count("POST /tokenize") == 1
    assert calls.index("POST /tokenize") < [i for i, c in enumerate(calls) if c == "POST /v1/chat/completions"][1]


def test_help(conversation: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    script(monkeypatch, "/?")
    out = run(capsys, "run", "tiny")[1]
    for command in ("/set parameter", "/set system", "/show", "/clear", "/bye", '"""'):
        assert command in out


def test_history_is_kept_in_the_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readline = pytest.importorskip("readline")
    path = tmp_path / "home" / "run_history"
    readline.clear_history()
    history = repl.History(path)
    readline.add_history("hello")
    readline.add_history("/set parameter temperature 0")
    history.save()
    assert path.read_text().splitlines()[-2:] == ["hello", "/set parameter temperature 0"]
    assert path.stat().st_mode & 0o777 == 0o600  # what was typed is the owner's to read
    readline.clear_history()
    repl.History(path)  # a new conversation reads it back
    assert [readline.get_history_item(i) for i in (1, 2)] == ["hello", "/set parameter temperature 0"]
    readline.clear_history()


def test_chat_body_and_partial_turns() -> None:
    chat = Chat("tiny", system="S", keep_alive=300)
    chat.set_parameter("stop", "a")
    chat.set_parameter("stop", "b")
    body = chat.body("hi")
    assert body["stop"] == ["a", "b"] and body["keep_alive"] == 300
    assert body["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    chat.unset_parameter("stop")
    assert "stop" not in chat.body("hi")
    with pytest.raises(BitingLipError):
        chat.unset_parameter("warmth")
    assert chat_module.MAX_STOP == 16  # as the server's (gateway/protocol/sampling.py)
