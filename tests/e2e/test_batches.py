"""Batches and background tasks through the real server and engine, driven by the official `openai` client
(files.create, batches.create/retrieve/list/cancel, files.content) and by httpx on /api/tasks."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from e2e.conftest import MODEL, Server

CHAT = "/v1/chat/completions"


def request_line(custom_id: str, url: str = CHAT, **body: Any) -> str:
    if url == CHAT:
        payload = {"model": MODEL, "messages": [{"role": "user", "content": f"Say {custom_id}."}], **body}
    else:
        payload = {"model": MODEL, "prompt": f"Once upon {custom_id}", **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": payload})


def upload(client: openai.OpenAI, lines: list[str]) -> str:
    return client.files.create(file=("requests.jsonl", "\n".join(lines).encode()), purpose="batch").id


def wait_ended(client: openai.OpenAI, batch_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    seen_counts = []
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        seen_counts.append(batch.request_counts.completed if batch.request_counts else 0)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch, seen_counts
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} did not end in {timeout} s")


def test_a_chat_batch_through_the_openai_client(client: openai.OpenAI) -> None:
    lines = [request_line(f"r{i}", max_tokens=4 + i % 5, ignore_eos=True) for i in range(60)]
    lines.insert(7, request_line("bad-param", max_tokens=4, temperature=9))
    file = upload(client, lines)
    batch = client.batches.create(input_file_id=file, endpoint=CHAT, completion_window="24h", metadata={"suite": "e2e"})
    assert batch.status == "in_progress" and batch.request_counts is not None and batch.request_counts.total == 61
    done, counts = wait_ended(client, batch.id)
    assert done.status == "completed" and done.metadata == {"suite": "e2e"}
    assert done.request_counts.completed == 60 and done.request_counts.failed == 1
    assert counts == sorted(counts)  # progress only moves forward
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == [f"r{i}" for i in range(60)]
    for i, o in enumerate(output):
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["usage"]["completion_tokens"] == 4 + i % 5  # each line's own request, answered once
    [error] = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert error["custom_id"] == "bad-param" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "temperature"
    assert done.usage is not None and done.usage.output_tokens == sum(4 + i % 5 for i in range(60))
    assert any(b.id == batch.id for b in client.batches.list(limit=5).data)


def test_a_completions_batch_and_list_paging(client: openai.OpenAI) -> None:
    file = upload(client, [request_line(f"c{i}", url="/v1/completions", max_tokens=3) for i in range(5)])
    made = [
        client.batches.create(input_file_id=file, endpoint="/v1/completions", completion_window="1h") for _ in range(3)
    ]
    for batch in made:
        done, _ = wait_ended(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 5
        first = json.loads(client.files.content(done.output_file_id).text.splitlines()[0])
        assert first["response"]["body"]["object"] == "text_completion"
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == [made[2].id, made[1].id] and page.has_more
    following = client.batches.list(limit=2, after=page.data[-1].id)
    assert following.data[0].id == made[0].id


def test_an_input_file_with_a_wrong_line_fails_the_batch_with_its_line_number(client: openai.OpenAI) -> None:
    lines = [request_line("a"), "not json at all", request_line("c", model="no-such-model"), request_line("a")]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    found = [(e.code, e.line) for e in batch.errors.data]
    assert found == [("invalid_json_line", 2), ("model_not_found", 3), ("duplicate_custom_id", 4)]


def test_bad_requests_get_openai_errors(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(
            input_file_id=upload(client, [request_line("a")]), endpoint="/v1/embeddings", completion_window="24h"
        )  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    r = httpx.post(f"{server.url}/v1/files", files={"file": ("x.jsonl", b"{}")}, timeout=30)  # no purpose
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_cancel_a_running_batch_aborts_its_lines_and_keeps_what_finished(client: openai.OpenAI, server: Server) -> None:
    lines = [request_line(f"long{i}", max_tokens=1500, ignore_eos=True) for i in range(40)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="24h")
    time.sleep(1.5)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done, _ = wait_ended(client, batch.id, timeout=30)
    assert done.status == "cancelled" and done.cancelled_at is not None
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert len(errors) + done.request_counts.completed == 40
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    # The engine holds none of them any more.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = httpx.get(f"{server.url}/api/deployments/{MODEL}", timeout=10).json()["stats"]
        if stats["in_flight"] == stats["unfinished"] == 0:
            break
        time.sleep(0.2)
    assert stats["in_flight"] == stats["background"] == stats["unfinished"] == 0


def test_tasks_submit_idempotently_run_and_cancel(server: Server) -> None:
    api = httpx.Client(base_url=server.url, timeout=60)
    body = {
        "kind": "chat",
        "request": {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "ignore_eos": True,
        },
        "priority": 3,
        "idempotency_key": f"e2e-{time.time()}",
    }
    first = api.post("/api/tasks", json=body)
    again = api.post("/api/tasks", json=body)
    assert first.status_code == 202 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    task_id = first.json()["id"]
    deadline = time.monotonic() + 60
    while (task := api.get(f"/api/tasks/{task_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert task["state"] == "succeeded" and task["priority"] == 3 and task["attempts"] == 1
    assert task["result"]["usage"]["completion_tokens"] == 5 and task["result"]["choices"][0]["message"]["content"]
    long = dict(body, idempotency_key=None, request=dict(body["request"], max_tokens=1800))
    running = api.post("/api/tasks", json=long).json()
    while api.get(f"/api/tasks/{running['id']}").json()["state"] == "queued":
        time.sleep(0.05)
    cancelled = api.post(f"/api/tasks/{running['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert api.post(f"/api/tasks/{running['id']}/cancel").status_code == 409
    bad = api.post("/api/tasks", json=dict(body, request={"model": MODEL, "messages": "nope"}, idempotency_key=None))
    assert bad.status_code == 202  # a bad parameter fails the task, as it would fail the live request
    while (failed := api.get(f"/api/tasks/{bad.json()['id']}").json())["state"] in ("queued", "running"):
        time.sleep(0.05)
    assert failed["state"] == "failed" and failed["error"]["status_code"] == 400 and failed["attempts"] == 1
    listed = api.get("/api/tasks", params={"state": "cancelled", "limit": 5}).json()
    assert running["id"] in [t["id"] for t in listed["data"]]
    unknown = api.post("/api/tasks", json=dict(body, request={"model": "nope", "messages": []}, idempotency_key=None))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_a_batch_past_its_completion_window_expires_keeping_what_finished(client: openai.OpenAI) -> None:
    lines = [request_line("quick", max_tokens=2)] + [
        request_line(f"slow{i}", max_tokens=1800, ignore_eos=True) for i in range(6)
    ]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=CHAT, completion_window="3s")
    done, _ = wait_ended(client, batch.id, timeout=30)
    assert done.status == "expired" and done.expired_at is not None
    assert done.expired_at - done.created_at < 10
    output = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == ["quick"]
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == [f"slow{i}" for i in range(6)]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_the_cli_submits_a_batch_waits_for_it_and_writes_its_files(server: Server, tmp_path: Any) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(request_line(f"cli{i}", max_tokens=3) for i in range(12)) + "\n")
    done = server.cli("batches", "submit", str(source), "--wait", "--metadata", "via=cli", "--url", server.url)
    assert done.returncode == 0, done.stderr
    output = [json.loads(x) for x in (tmp_path / "prompts.output.jsonl").read_text().splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(f"cli{i}" for i in range(12))
    assert not (tmp_path / "prompts.errors.jsonl").exists()
    listed = server.cli("batches", "list", "--json", "--url", server.url)
    newest = json.loads(listed.stdout)[0]
    assert newest["metadata"] == {"via": "cli"} and newest["request_counts"]["completed"] == 12
    task = server.cli(
        "tasks", "submit", "--model", MODEL, "--message", "hi", "--max-tokens", "4", "--wait", "--url", server.url
    )
    assert task.returncode == 0, task.stderr
    # It prints the answer's text, which random weights can make blank: compare it with the stored result.
    task_id = task.stderr.split()[0]
    shown = json.loads(server.cli("tasks", "show", task_id, "--json", "--url", server.url).stdout)
    assert shown["state"] == "succeeded" and shown["result"]["usage"]["completion_tokens"] > 0
    assert task.stdout == shown["result"]["choices"][0]["message"]["content"] + "\n"
