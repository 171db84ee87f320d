"""`bitinglip tasks submit | list | show | cancel` against a stand-in server (httpx.MockTransport)."""

from __future__ import annotations

import io
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import T0, StandIn, error, no_server, ok, rows, run, sent


def task(task_id: str = "task_1", **changes: Any) -> dict[str, Any]:
    """A Task as the server sends it (bitinglip/tasks/wire.py)."""
    body: dict[str, Any] = {
        "id": task_id,
        "object": "task",
        "kind": "chat",
        "model": "tiny",
        "state": "queued",
        "priority": 0,
        "attempts": 0,
        "max_attempts": 3,
        "idempotency_key": None,
        "created_at": T0,
        "started_at": None,
        "finished_at": None,
        "batch_id": None,
        "custom_id": None,
        "request": None,
        "result": None,
        "error": None,
    }
    return body | changes


def chat_result(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "tiny",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


DONE = task(state="succeeded", attempts=1, started_at=T0 + 1, finished_at=T0 + 3, result=chat_result("Hello there"))
BAD_REQUEST = {
    "status_code": 400,
    "message": "max_tokens must be at least 1",
    "type": "invalid_request_error",
    "param": "max_tokens",
    "code": None,
}
FAILED = task(state="failed", attempts=1, finished_at=T0 + 2, error=BAD_REQUEST)


# -- tasks submit


def test_submit_chat_builds_the_request(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/api/tasks", ok(task(priority=5, idempotency_key="k1"), 202))
    options = "--priority 5 --key k1 --max-attempts 2 --max-tokens 16".split()
    code, out, err = run(capsys, "tasks", "submit", "--model", "tiny", "--prompt", "Say hi", *options)
    assert (code, out, err) == (0, "task_1 queued\n", "")
    assert server.calls() == ["POST /api/tasks"]
    assert sent(server) == {
        "kind": "chat",
        "request": {"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16},
        "priority": 5,
        "idempotency_key": "k1",
        "max_attempts": 2,
    }


def test_submit_completion_sends_a_prompt(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/api/tasks", ok(task(kind="completion"), 202))
    code, out, _ = run(capsys, "tasks", "submit", "--kind", "completion", "--model", "tiny", "--message", "Once")
    assert code == 0 and out == "task_1 queued\n"
    assert sent(server) == {"kind": "completion", "request": {"model": "tiny", "prompt": "Once"}}  # server defaults


def test_submit_file_and_stdin(
    server: StandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    server.on("POST", "/api/tasks", ok(task(), 202))
    assert run(capsys, "tasks", "submit", "--file", str(path), "--priority", "-1")[0] == 0
    assert sent(server) == {"kind": "chat", "request": body, "priority": -1}

    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(body)))
    assert run(capsys, "tasks", "submit", "--file", "-", "--model", "other", "--json")[0] == 0
    assert sent(server, 1)["request"] == body | {"model": "other"}  # --model wins over the file's


def test_submit_refuses_a_bad_request_before_asking(
    server: StandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "request.json"
    path.write_text("{not json")
    code, out, err = run(capsys, "tasks", "submit", "--file", str(path))
    assert (code, out) == (1, "") and err.startswith(f"bitinglip: {path} is not JSON")
    path.write_text("[1, 2]")
    assert run(capsys, "tasks", "submit", "--file", str(path))[2].endswith("a request body is a JSON object\n")
    code, _, err = run(capsys, "tasks", "submit", "--prompt", "hi")
    assert code == 1 and "--model" in err
    with pytest.raises(SystemExit):  # neither --prompt nor --file
        run(capsys, "tasks", "submit", "--model", "tiny")
    assert server.requests == []


def test_submit_wait_prints_the_result(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    running = task(state="running", attempts=1, started_at=T0 + 1)
    server.on("POST", "/api/tasks", ok(task(), 202))
    server.on("GET", "/api/tasks/task_1", ok(task()), ok(running), ok(DONE))
    code, out, err = run(capsys, "tasks", "submit", "--model", "tiny", "--prompt", "hi", "--wait")
    assert (code, out) == (0, "Hello there\n"), err  # the text alone on stdout, for scripts
    assert server.calls() == ["POST /api/tasks"] + ["GET /api/tasks/task_1"] * 3
    assert "task_1 queued … 0s" in err  # not a terminal: the first progress line (then one every few seconds)
    # which task it was and what it cost, on stderr
    assert err.splitlines()[-1] == "task_1 succeeded, 3 prompt + 2 completion tokens, ran 2.0 s"


def test_submit_wait_prints_a_completions_text(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    result = {"object": "text_completion", "choices": [{"index": 0, "text": " upon a time", "finish_reason": "length"}]}
    done = task(kind="completion", state="succeeded", result=result)
    server.on("POST", "/api/tasks", ok(done, 200))  # the idempotency key was seen: the task made first, ended
    code, out, err = run(
        capsys, "tasks", "submit", "--kind", "completion", "--model", "tiny", "--prompt", "Once", "--wait"
    )
    assert (code, out) == (0, " upon a time\n")
    assert server.calls() == ["POST /api/tasks"]
    assert err == "task_1 succeeded\n"  # no usage, no times in this result: only what there is


def test_submit_wait_exits_1_when_it_did_not_succeed(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/api/tasks", ok(task(), 202))
    server.on("GET", "/api/tasks/task_1", ok(FAILED))
    code, out, err = run(capsys, "tasks", "submit", "--model", "tiny", "--prompt", "hi", "--wait")
    assert (code, out) == (1, "")
    assert err.endswith("bitinglip: task_1 failed: max_tokens must be at least 1 (400 invalid_request_error)\n")

    server.on("GET", "/api/tasks/task_1", ok(task(state="cancelled")))
    code, out, err = run(capsys, "tasks", "submit", "--model", "tiny", "--prompt", "hi", "--wait", "--json")
    assert code == 1 and json.loads(out)["state"] == "cancelled"
    assert err.endswith("bitinglip: task_1 cancelled\n")


def test_submit_wait_interrupted_leaves_the_task_running(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/api/tasks", ok(task(), 202))
    server.on("GET", "/api/tasks/task_1", ok(task()), KeyboardInterrupt())
    code, out, err = run(capsys, "tasks", "submit", "--model", "tiny", "--prompt", "hi", "--wait")
    assert (code, out) == (130, "")
    assert "`bitinglip tasks show task_1`" in err
    assert "POST /api/tasks/task_1/cancel" not in server.calls()


# -- tasks list, show, cancel


def test_list_table(server: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: T0 + 125)
    page = {"object": "list", "data": [DONE, FAILED, task("task_0")], "next_cursor": None, "has_more": False}
    server.on("GET", "/api/tasks", ok(page))
    code, out, err = run(capsys, "tasks", "list")
    assert (code, err) == (0, "")
    table = rows(out)
    assert table[0] == ["ID", "KIND", "MODEL", "STATE", "PRIO", "ATTEMPTS", "AGE"]
    assert table[1] == ["task_1", "chat", "tiny", "succeeded", "0", "1/3", "2m05s"]
    assert table[2][3] == "failed: max_tokens must be at least 1"
    assert table[3] == ["task_0", "chat", "tiny", "queued", "0", "0/3", "2m05s"]

    monkeypatch.setattr(time, "time", lambda: T0 + 3 * 86400 + 4 * 3600 + 59)
    assert rows(run(capsys, "tasks", "list")[1])[1][-1] == "3d04h"


def test_list_all_follows_the_cursor(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    first = {"object": "list", "data": [task("task_3"), task("task_2")], "next_cursor": "task_2", "has_more": True}
    last = {"object": "list", "data": [task("task_1")], "next_cursor": None, "has_more": False}
    server.on("GET", "/api/tasks", ok(first), ok(last))
    code, out, err = run(capsys, "tasks", "list", "--state", "queued", "--limit", "2", "--all", "--json")
    assert (code, err) == (0, "")
    assert [t["id"] for t in json.loads(out)] == ["task_3", "task_2", "task_1"]
    params = [dict(r.url.params) for r in server.requests]
    assert params == [{"state": "queued", "limit": "2"}, {"state": "queued", "limit": "2", "after": "task_2"}]


def test_list_without_all_says_there_is_more(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    first = {"object": "list", "data": [task("task_3")], "next_cursor": "task_3", "has_more": True}
    server.on("GET", "/api/tasks", ok(first))
    code, out, err = run(capsys, "tasks", "list", "--batch", "batch_1")
    assert code == 0 and len(rows(out)) == 2
    assert "--all" in err
    assert [dict(r.url.params) for r in server.requests] == [{"batch_id": "batch_1"}]

    server.on("GET", "/api/tasks", ok({"object": "list", "data": [], "next_cursor": None, "has_more": False}))
    assert run(capsys, "tasks", "list")[1].startswith("no tasks")


def test_show_a_task_and_its_result_or_error(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/api/tasks/task_1", ok(DONE | {"idempotency_key": "k1"}))
    code, out, _ = run(capsys, "tasks", "show", "task_1")
    assert code == 0
    fields, _, text = out.partition("\n\n")
    assert rows(fields)[:7] == [
        ["id:", "task_1"],
        ["kind:", "chat"],
        ["model:", "tiny"],
        ["state:", "succeeded"],
        ["priority:", "0"],
        ["attempts:", "1 of 3"],
        ["key:", "k1"],
    ]
    finished = datetime.fromtimestamp(T0 + 3).strftime("%Y-%m-%d %H:%M:%S")
    assert ["finished:", finished] in rows(fields)
    assert text == "Hello there\n"

    server.on("GET", "/api/tasks/task_9", ok(FAILED | {"id": "task_9", "batch_id": "batch_1", "custom_id": "c"}))
    code, out, _ = run(capsys, "tasks", "show", "task_9")
    assert code == 0
    assert "batch:     batch_1 (custom_id c)" in out
    assert out.endswith("\n\ntask_9 failed: max_tokens must be at least 1 (400 invalid_request_error)\n")

    server.on("GET", "/api/tasks/task_1", ok(DONE))
    assert json.loads(run(capsys, "tasks", "show", "task_1", "--json")[1]) == DONE


def test_cancel(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/api/tasks/task_1/cancel", ok(task(state="cancelled")))
    assert run(capsys, "tasks", "cancel", "task_1") == (0, "task_1 cancelled\n", "")
    message = "task task_2 has already ended (succeeded)"
    server.on("POST", "/api/tasks/task_2/cancel", error(409, message))
    assert run(capsys, "tasks", "cancel", "task_2") == (1, "", f"bitinglip: {message}\n")


def test_no_server(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/api/tasks", httpx.ConnectError("[Errno 111] Connection refused"))
    assert run(capsys, "tasks", "list") == (1, "", no_server())
