"""`bitinglip batches submit | list | show | cancel` against a stand-in server (httpx.MockTransport)."""

from __future__ import annotations

import email
import email.policy
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import T0, URL, StandIn, error, no_server, ok, rows, run, sent


def batch(batch_id: str = "batch_1", **changes: Any) -> dict[str, Any]:
    """A Batch as the server sends it (OpenAI's shape)."""
    body: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": None,
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(T0),
        "in_progress_at": int(T0),
        "expires_at": int(T0) + 86400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 3, "completed": 0, "failed": 0},
        "metadata": None,
        "usage": None,
    }
    return body | changes


COMPLETED = batch(
    status="completed",
    output_file_id="file-out",
    error_file_id="file-err",
    finalizing_at=int(T0) + 9,
    completed_at=int(T0) + 10,
    request_counts={"total": 3, "completed": 2, "failed": 1},
    usage={"input_tokens": 30, "output_tokens": 12, "total_tokens": 42},
)
OUTPUT = b'{"id":"r1","custom_id":"a","response":{"status_code":200}}\n{"id":"r2","custom_id":"b"}\n'
ERRORS = b'{"id":"r3","custom_id":"c","error":{"message":"max_tokens must be at least 1"}}\n'
FILE_OBJECT = {
    "id": "file-in",
    "object": "file",
    "bytes": 3,
    "created_at": int(T0),
    "expires_at": None,
    "filename": "requests.jsonl",
    "purpose": "batch",
    "status": "processed",
}


def form(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """A multipart request's fields: name -> (filename, content)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + request.content, policy=email.policy.HTTP)
    return {
        part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
        for part in message.iter_parts()  # type: ignore[attr-defined]
    }


@pytest.fixture
def requests_file(tmp_path: Path) -> Path:
    path = tmp_path / "requests.jsonl"
    lines = [
        {"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": {"model": "tiny", "messages": []}}
        for c in "abc"
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# -- batches submit


def test_batch_submit_uploads_then_creates(
    server: StandIn, capsys: pytest.CaptureFixture[str], requests_file: Path
) -> None:
    server.on("POST", "/v1/files", ok(FILE_OBJECT))
    server.on("POST", "/v1/batches", ok(batch()))
    metadata = ["--metadata", "project=demo", "note=a=b", "--metadata", "who=me"]
    argv = ["batches", "submit", str(requests_file), "--window", "1h", *metadata, "--priority", "3"]
    code, out, err = run(capsys, *argv, "--endpoint", "/v1/completions")
    assert (code, out, err) == (0, "batch_1 in_progress (3 requests)\n", "")
    assert server.calls() == ["POST /v1/files", "POST /v1/batches"]
    assert form(server.requests[0]) == {
        "purpose": (None, b"batch"),
        "file": ("requests.jsonl", requests_file.read_bytes()),
    }
    assert sent(server, 1) == {
        "input_file_id": "file-in",
        "endpoint": "/v1/completions",
        "completion_window": "1h",
        "metadata": {"project": "demo", "note": "a=b", "who": "me"},
        "priority": 3,
    }


def test_batch_submit_defaults(server: StandIn, capsys: pytest.CaptureFixture[str], requests_file: Path) -> None:
    server.on("POST", "/v1/files", ok(FILE_OBJECT))
    server.on("POST", "/v1/batches", ok(batch()))
    code, out, _ = run(capsys, "batches", "submit", str(requests_file), "--json")
    assert code == 0 and json.loads(out) == batch()
    assert sent(server, 1) == {
        "input_file_id": "file-in",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }


def test_a_batch_failed_at_validation_prints_its_lines(
    server: StandIn, capsys: pytest.CaptureFixture[str], requests_file: Path
) -> None:
    errors = [
        {"code": "invalid_json", "message": "line is not JSON", "param": None, "line": 2},
        {"code": "model_not_found", "message": "no model named 'huge'", "param": "body.model", "line": 7},
    ]
    refused = batch(status="failed", failed_at=int(T0), errors={"object": "list", "data": errors})
    server.on("POST", "/v1/files", ok(FILE_OBJECT))
    server.on("POST", "/v1/batches", ok(refused))
    code, out, err = run(capsys, "batches", "submit", str(requests_file), "--wait")
    assert (code, out) == (1, "")
    assert err == (
        "bitinglip: batch_1 failed: requests.jsonl has 2 error(s)\n"
        "  line 2: line is not JSON (invalid_json)\n"
        "  line 7: no model named 'huge' (model_not_found)\n"
    )
    assert server.calls() == ["POST /v1/files", "POST /v1/batches"]  # nothing to wait for, nothing to download


def test_batch_submit_wait_downloads_the_results(
    server: StandIn, capsys: pytest.CaptureFixture[str], requests_file: Path
) -> None:
    progress = [batch(request_counts={"total": 3, "completed": n, "failed": 0}) for n in (1, 2)]
    server.on("POST", "/v1/files", ok(FILE_OBJECT))
    server.on(
        "POST", "/v1/batches", ok(batch(status="validating", request_counts={"total": 0, "completed": 0, "failed": 0}))
    )
    server.on("GET", "/v1/batches/batch_1", *(ok(b) for b in progress), ok(COMPLETED))
    server.on("GET", "/v1/files/file-out/content", httpx.Response(200, content=OUTPUT))
    server.on("GET", "/v1/files/file-err/content", httpx.Response(200, content=ERRORS))
    code, out, err = run(capsys, "batches", "submit", str(requests_file), "--wait")
    assert code == 0, err
    assert server.calls() == [
        "POST /v1/files",
        "POST /v1/batches",
        *["GET /v1/batches/batch_1"] * 3,
        "GET /v1/files/file-out/content",
        "GET /v1/files/file-err/content",
    ]
    output, errors = requests_file.with_name("requests.output.jsonl"), requests_file.with_name("requests.errors.jsonl")
    assert output.read_bytes() == OUTPUT and errors.read_bytes() == ERRORS
    assert sorted(p.name for p in requests_file.parent.iterdir()) == [
        "requests.errors.jsonl",
        "requests.jsonl",
        "requests.output.jsonl",
    ]  # no .part left
    assert out == f"batch_1 completed: 2/3 succeeded, 1 failed; output in {output}; errors in {errors}\n"
    assert err.startswith("batch_1 in_progress: 1/3 done (33%), 0s, ")  # a log: one line every few seconds
    assert err.count("\n") == 1


def test_batch_wait_draws_a_bar_on_a_terminal(
    server: StandIn,
    capsys: pytest.CaptureFixture[str],
    requests_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    cancelled = COMPLETED | {"status": "cancelled", "error_file_id": None, "cancelled_at": int(T0) + 10}
    counts = [{"total": 4, "completed": 1, "failed": 0}, {"total": 4, "completed": 2, "failed": 1}]
    server.on("POST", "/v1/files", ok(FILE_OBJECT))
    server.on("POST", "/v1/batches", ok(batch()))
    server.on("GET", "/v1/batches/batch_1", *(ok(batch(request_counts=c)) for c in counts), ok(cancelled))
    server.on("GET", "/v1/files/file-out/content", httpx.Response(200, content=OUTPUT))
    out_path = tmp_path / "out" / "here.jsonl"
    out_path.parent.mkdir()
    code, out, err = run(capsys, "batches", "submit", str(requests_file), "--wait", "--output", str(out_path))
    assert code == 1  # it ended, but not completed
    assert out_path.read_bytes() == OUTPUT
    assert out == f"batch_1 cancelled: 2/3 succeeded, 1 failed; output in {out_path}\n"
    assert "\rin_progress " + "█" * 7 + "░" * 23 + " 1/4 25%, 0s, " in err
    assert " 3/4 75%, 1 failed, 0s, " in err and "lines/s\x1b[K" in err
    assert err.endswith("\r\x1b[K")  # cleared before the summary


def test_batch_wait_interrupted_leaves_the_batch_running(
    server: StandIn, capsys: pytest.CaptureFixture[str], requests_file: Path
) -> None:
    server.on("POST", "/v1/files", ok(FILE_OBJECT))
    server.on("POST", "/v1/batches", ok(batch()))
    server.on("GET", "/v1/batches/batch_1", ok(batch()), KeyboardInterrupt())
    code, out, err = run(capsys, "batches", "submit", str(requests_file), "--wait")
    assert (code, out) == (130, "")
    assert "stopped waiting: batch_1 goes on on the server; `bitinglip batches show batch_1` follows it" in err
    assert server.calls()[-1] == "GET /v1/batches/batch_1"  # not cancelled, nothing downloaded


def test_a_broken_download_leaves_no_file(
    server: StandIn, capsys: pytest.CaptureFixture[str], requests_file: Path
) -> None:
    server.on("POST", "/v1/files", ok(FILE_OBJECT))
    server.on("POST", "/v1/batches", ok(COMPLETED))
    server.on("GET", "/v1/files/file-out/content", error(404, "no file file-out"))
    code, out, err = run(capsys, "batches", "submit", str(requests_file), "--wait")
    assert (code, out, err) == (1, "", "bitinglip: no file file-out\n")
    assert [p.name for p in requests_file.parent.iterdir()] == ["requests.jsonl"]

    class CutOff(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield OUTPUT[:10]
            raise httpx.ReadError("connection reset by peer")

    server.on("GET", "/v1/files/file-out/content", httpx.Response(200, stream=CutOff()))
    code, out, err = run(capsys, "batches", "submit", str(requests_file), "--wait")
    assert (code, out) == (1, "")
    assert err == f"bitinglip: GET {URL}/v1/files/file-out/content failed: connection reset by peer\n"
    assert [p.name for p in requests_file.parent.iterdir()] == ["requests.jsonl"]  # the half file is gone


def test_batch_submit_without_the_file(server: StandIn, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    assert run(capsys, "batches", "submit", str(missing)) == (1, "", f"bitinglip: no file {missing}\n")
    assert server.requests == []


# -- batches list, show, cancel


def test_batches_list(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    page = {"object": "list", "data": [COMPLETED, batch("batch_0")], "first_id": "batch_1", "last_id": "batch_0"}
    server.on("GET", "/v1/batches", ok(page | {"has_more": True}))
    code, out, err = run(capsys, "batches", "list", "--limit", "2")
    assert code == 0
    created = datetime.fromtimestamp(T0).strftime("%Y-%m-%d %H:%M")
    assert rows(out) == [
        ["ID", "STATUS", "DONE/TOTAL", "FAILED", "ENDPOINT", "CREATED"],
        ["batch_1", "completed", "3/3", "1", "/v1/chat/completions", created],
        ["batch_0", "in_progress", "0/3", "0", "/v1/chat/completions", created],
    ]
    assert dict(server.requests[0].url.params) == {"limit": "2"}
    assert "--limit 4" in err  # there is more

    server.on("GET", "/v1/batches", ok(page | {"data": [], "has_more": False}))
    code, out, err = run(capsys, "batches", "list", "--json")
    assert (code, json.loads(out), err) == (0, [], "")


def test_batches_show(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    shown = COMPLETED | {"metadata": {"project": "demo"}}
    server.on("GET", "/v1/batches/batch_1", ok(shown))
    code, out, _ = run(capsys, "batches", "show", "batch_1")
    assert code == 0
    table = rows(out)
    assert all(len(line) == 2 for line in table)  # a name and its value, lined up
    fields = dict(table)
    assert fields["status:"] == "completed"
    assert fields["requests:"] == "3/3 done, 1 failed"
    assert (fields["input file:"], fields["output file:"], fields["error file:"]) == ("file-in", "file-out", "file-err")
    assert fields["tokens:"] == "30 in + 12 out = 42"
    assert fields["metadata:"] == "project=demo"
    assert fields["completed:"] == datetime.fromtimestamp(T0 + 10).strftime("%Y-%m-%d %H:%M:%S")
    assert "expires:" not in fields  # it has ended

    errors = {"object": "list", "data": [{"code": "too_many_lines", "message": "too many", "param": None, "line": 9}]}
    server.on("GET", "/v1/batches/batch_2", ok(batch("batch_2", status="failed", errors=errors)))
    out = run(capsys, "batches", "show", "batch_2")[1]
    assert out.endswith("\nerrors:\n  line 9: too many (too_many_lines)\n")
    assert json.loads(run(capsys, "batches", "show", "batch_1", "--json")[1]) == shown


def test_batches_cancel(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/v1/batches/batch_1/cancel", ok(batch(status="cancelling")))
    assert run(capsys, "batches", "cancel", "batch_1") == (0, "batch_1 cancelling\n", "")
    server.on("POST", "/v1/batches/batch_2/cancel", error(409, "batch batch_2 has already ended (completed)"))
    assert run(capsys, "batches", "cancel", "batch_2") == (
        1,
        "",
        "bitinglip: batch batch_2 has already ended (completed)\n",
    )


def test_no_server(server: StandIn, capsys: pytest.CaptureFixture[str], requests_file: Path) -> None:
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    server.on("POST", "/v1/files", refused)
    server.on("GET", "/v1/batches/batch_1", refused)
    assert run(capsys, "batches", "submit", str(requests_file)) == (1, "", no_server())
    assert run(capsys, "batches", "show", "batch_1") == (1, "", no_server())
