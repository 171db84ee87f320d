"""kill -9 in the middle of a 1,000-line batch, then start again: the batch resumes and finishes, and its
output holds exactly one line per input line. The model is not declared: the batch loads it on demand, both
times."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.conftest import Server, start_server, stop_server

LINES = 1000
MAX_TOKENS = 24


def batch(server: Server, batch_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/v1/batches/{batch_id}", timeout=30).json()
    return answer


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path) -> Path:
    env = os.environ | {"BITINGLIP_HOME": str(tmp_path), "BITINGLIP_ENV": "test"}
    command = [
        str(Path(sys.executable).parent / "bitinglip"),
        "models",
        "import",
        str(tiny_model_dir),
        "--name",
        "tiny",
    ]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return tmp_path


def test_kill_9_in_the_middle_of_a_batch_loses_nothing_and_runs_nothing_twice(home: Path) -> None:
    server = start_server(home, "")  # nothing declared: the batch's model loads on demand
    lines = [
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"model": "tiny", "prompt": f"Story {i}:", "max_tokens": MAX_TOKENS, "ignore_eos": True},
            }
        )
        for i in range(LINES)
    ]
    try:
        upload = httpx.post(
            f"{server.url}/v1/files",
            files={"file": ("big.jsonl", "\n".join(lines).encode())},
            data={"purpose": "batch"},
            timeout=60,
        )
        made = httpx.post(
            f"{server.url}/v1/batches",
            json={"input_file_id": upload.json()["id"], "endpoint": "/v1/completions", "completion_window": "24h"},
            timeout=60,
        ).json()
        assert made["status"] == "in_progress" and made["request_counts"]["total"] == LINES
        deadline = time.monotonic() + 300
        while (done_before := batch(server, made["id"])["request_counts"]["completed"]) < 150:
            assert time.monotonic() < deadline, "the batch did not start"
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        first_log = server.log()
    finally:
        stop_server(server)
    assert done_before < LINES, "the batch ended before the kill; nothing was tested"

    again = start_server(home, "")
    try:
        deadline = time.monotonic() + 300
        while (state := batch(again, made["id"]))["status"] not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, f"the batch did not finish after the restart: {state}"
            time.sleep(0.5)
        assert state["status"] == "completed"
        assert state["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
        content = httpx.get(f"{again.url}/v1/files/{state['output_file_id']}/content", timeout=60).text
        output = [json.loads(x) for x in content.splitlines()]
        ids = [o["custom_id"] for o in output]
        assert len(ids) == LINES and set(ids) == {f"line-{i}" for i in range(LINES)}  # each once: none lost, none twice
        assert all(o["response"]["body"]["usage"]["completion_tokens"] == MAX_TOKENS for o in output)
        assert state["error_file_id"] is None
        tasks = httpx.get(f"{again.url}/api/tasks", params={"batch_id": made["id"], "limit": LINES}, timeout=60).json()[
            "data"
        ]
        attempts = [t["attempts"] for t in tasks]
        assert len(tasks) == LINES and set(attempts) <= {1, 2}
        assert attempts.count(2) > 0  # those running at the kill came back through their leases and ran again
        recovered = [json.loads(x) for x in again.log().splitlines() if '"tasks.recovered"' in x]
        assert recovered and recovered[0]["tasks"] == attempts.count(2)
        assert '"deployment.on_demand"' in first_log and '"deployment.on_demand"' in again.log()
    finally:
        stop_server(again)
