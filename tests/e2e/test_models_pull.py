"""The shared server was given a hub id: it pulled the model from the hub stand-in first, then served it."""

from __future__ import annotations

import json

import httpx

from e2e.conftest import MODEL, Hub, Server


def test_serving_a_hub_id_pulled_it_first_then_serves_it(server: Server, hub: Hub) -> None:
    # Seeded, and 8 tokens: a quarter of the tiny model's tokens are lone bytes of a UTF-8 character (no text
    # yet), so 4 unseeded tokens came out as no text about once in 200 runs.
    reply = server.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        seed=11,
        extra_body={"ignore_eos": True},
    )
    assert reply.model == MODEL and reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 8

    listed = server.cli("models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    row = {r["name"]: r for r in json.loads(listed.stdout)}[MODEL]
    assert (row["state"], row["source"], row["revision"], row["commit_sha"]) == ("ready", "hub", "main", hub.sha)
    assert row["path"].endswith(f"/hub/org/tiny-chat/{hub.sha}") and row["architecture"] == "LlamaForCausalLM"
    assert (server.log_path.parent / "models" / "hub" / "org" / "tiny-chat" / hub.sha / "model.safetensors").is_file()

    log = server.log()
    for event in ("model.pulling_before_serving", "model.pull_progress", "pull.ready", "engine.ready"):
        assert event in log, event


def test_a_served_model_cannot_be_removed_from_another_process(server: Server) -> None:
    shown = httpx.get(f"{server.url}/api/models/{MODEL}", timeout=10).json()
    assert shown["state"] == "ready" and shown["used_by_pid"] == server.proc.pid
    refused = server.cli("models", "rm", MODEL)
    assert refused.returncode == 1 and "being served" in refused.stderr


def test_pull_over_http_while_serving(server: Server, hub: Hub) -> None:
    """A second pull of what is served is a no-op: same commit, nothing downloaded again."""
    gets_before = len(hub.stub.file_gets())
    started = httpx.post(f"{server.url}/api/models/pulls", json={"model": MODEL}, timeout=30)
    assert started.status_code == 202, started.text
    pull_id = started.json()["id"]
    with httpx.stream("GET", f"{server.url}/api/models/pulls/{pull_id}/events", timeout=60) as events:
        names = [line.split(":", 1)[1].strip() for line in events.iter_lines() if line.startswith("event:")]
    assert names[-1] == "ready"
    assert len(hub.stub.file_gets()) == gets_before
