"""/api/models over HTTP (Litestar's TestClient) against the hub stand-in: pulls, events, search, errors."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from pull_support import ARCHS, TINY

import hubstub
from bitinglip.core import CorePlugin, Database, DbSettings
from bitinglip.models import HubClient, ModelRegistry, ModelService, ModelsPlugin


@pytest.fixture
def client(tmp_path: Path, stub: hubstub.HubStub) -> Iterator[TestClient[Litestar]]:
    # The app starts the database in its own loop (the TestClient's), as the server does.
    db = Database(DbSettings(url=f"sqlite+aiosqlite:///{tmp_path}/bitinglip.db"))
    hub = HubClient(endpoint=stub.url, timeout=10.0, max_retries=2, backoff_s=0.01)
    service = ModelService(ModelRegistry(db, tmp_path / "models"), hub, lambda: ARCHS)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await db.start()
        await service.start(resume_pulls=True)
        try:
            yield
        finally:
            await service.stop()
            await db.stop()

    app = Litestar(plugins=[CorePlugin(), ModelsPlugin(service)], lifespan=[lifespan], logging_config=None)
    with TestClient(app) as c:
        yield c


def poll(client: TestClient[Litestar], pull_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/models/pulls/{pull_id}").json()
        if status["state"] in ("ready", "failed", "cancelled"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"pull {pull_id} not finished after {timeout} s")


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_pull_then_poll_until_ready(client: TestClient[Litestar], tiny_sha: str) -> None:
    started = client.post("/api/models/pulls", json={"model": TINY})
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["model"] == TINY and body["commit_sha"] == tiny_sha  # the ref is resolved before the answer
    final = poll(client, body["id"])
    assert final["state"] == "ready" and final["bytes_done"] == final["bytes_total"] > 2_000_000

    shown = client.get(f"/api/models/{TINY}")
    assert shown.status_code == 200
    assert shown.json()["state"] == "ready" and shown.json()["commit_sha"] == tiny_sha
    assert [m["name"] for m in client.get("/api/models").json()["data"]] == [TINY]
    assert [p["id"] for p in client.get("/api/models/pulls").json()["data"]] == [body["id"]]

    again = client.post("/api/models/pulls", json={"model": TINY})
    assert poll(client, again.json()["id"])["up_to_date"] is True

    removed = client.delete(f"/api/models/{TINY}")
    assert removed.status_code == 200 and client.get(f"/api/models/{TINY}").status_code == 404


def test_events_stream_progress_then_a_final_ready_event(
    client: TestClient[Litestar], stub: hubstub.HubStub, tiny_sha: str
) -> None:
    stub.throttle_bytes_per_s = 1_500_000  # ~2 s: a couple of progress events
    pull_id = client.post("/api/models/pulls", json={"model": TINY}).json()["id"]
    with client.stream("GET", f"/api/models/pulls/{pull_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse(response.read().decode())
    names = [name for name, _ in events]
    assert names[-1] == "ready" and set(names[:-1]) == {"progress"} and len(names) >= 2
    assert any(0 < data["bytes_done"] < data["bytes_total"] for _, data in events[:-1])
    last = events[-1][1]
    assert last["bytes_done"] == last["bytes_total"] and last["commit_sha"] == tiny_sha


def test_search_says_what_vllm_can_serve(
    client: TestClient[Litestar], stub: hubstub.HubStub, tiny_files: dict[str, bytes]
) -> None:
    stub.add_repo("org/llama-chat", tiny_files, downloads=5, likes=50)
    weird = json.dumps({"architectures": ["NotARealModelForCausalLM"]}).encode()
    stub.add_repo("org/llama-weird", tiny_files | {"config.json": weird}, downloads=50, likes=5)
    stub.add_repo("org/unrelated", tiny_files, downloads=500)

    found = client.get("/api/models/search", params={"q": "llama"}).json()["data"]
    assert [(r["id"], r["servable"], r["downloads"]) for r in found] == [
        ("org/llama-weird", False, 50),
        ("org/llama-chat", True, 5),
    ]
    assert found[1]["architectures"] == ["LlamaForCausalLM"] and found[1]["task"] == "text-generation"
    by_likes = client.get("/api/models/search", params={"q": "llama", "sort": "likes", "limit": 1}).json()["data"]
    assert [r["id"] for r in by_likes] == ["org/llama-chat"]
    bad = client.get("/api/models/search", params={"q": "llama", "sort": "random"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "sort"


@pytest.mark.parametrize("model", ["../x", "", "org/my model", "/etc/passwd", "a" * 100 + "/b"])
def test_bad_id_is_a_400_envelope_and_no_hub_request(
    client: TestClient[Litestar], stub: hubstub.HubStub, model: str
) -> None:
    r = client.post("/api/models/pulls", json={"model": model})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_repo_id" and error["message"]
    assert stub.requests == []


def test_unknown_repo_is_404_and_gated_without_token_is_401(
    client: TestClient[Litestar], stub: hubstub.HubStub, tiny_files: dict[str, bytes]
) -> None:
    missing = client.post("/api/models/pulls", json={"model": "org/ghost"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "repo_not_found"
    stub.add_repo("org/gated", tiny_files, gated=True, token="hf_right")
    gated = client.post("/api/models/pulls", json={"model": "org/gated"})
    assert gated.status_code == 401
    assert gated.json()["error"]["code"] == "gated_repo" and "token" in gated.json()["error"]["message"]
    unknown_field = client.post("/api/models/pulls", json={"model": TINY, "alow_patterns": ["*"]})
    assert unknown_field.status_code == 400


def test_routes_with_slashes_do_not_collide(client: TestClient[Litestar], tiny_model_dir: Path) -> None:
    assert client.get("/api/models/pulls/nope").json()["error"]["message"].startswith("no pull with id")
    ghost = client.get("/api/models/org/pulls")  # a model name that ends like a route
    assert ghost.status_code == 404 and "not in the registry" in ghost.json()["error"]["message"]
    imported = client.post("/api/models/import", json={"path": str(tiny_model_dir), "name": "local/tiny"})
    assert imported.status_code == 201 and imported.json()["source"] == "local"
    assert client.get("/api/models/local/tiny").json()["architecture"] == "LlamaForCausalLM"
    assert client.delete("/api/models/local/tiny").status_code == 200
    assert tiny_model_dir.is_dir()  # an imported folder is the user's: never deleted
