"""The real server given a hub id: it pulls the model from a hub stand-in first, then serves it with the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

import hubstub
from e2e.conftest import start_server, stop_server

MODEL = "org/tiny-chat"


def test_serving_a_hub_id_pulls_it_first_then_serves_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    with hubstub.HubStub() as stub:
        sha = stub.add_repo_from_dir(MODEL, tiny_model_dir)
        stub.throttle_bytes_per_s = 500_000  # ~6 s, so the server logs its progress at least once
        server = start_server(tmp_path, MODEL, BITINGLIP_MODELS__HUB_ENDPOINT=stub.url)
        try:
            reply = server.openai().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, extra_body={"ignore_eos": True}
            )
            assert reply.model == MODEL and reply.choices[0].message.content
            assert reply.usage is not None and reply.usage.completion_tokens == 4

            listed = server.cli("models", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            row = {r["name"]: r for r in json.loads(listed.stdout)}[MODEL]
            assert (row["state"], row["source"], row["revision"], row["commit_sha"]) == ("ready", "hub", "main", sha)
            assert row["path"].endswith(f"/hub/org/tiny-chat/{sha}") and row["architecture"] == "LlamaForCausalLM"

            shown = httpx.get(f"{server.url}/api/models/{MODEL}", timeout=10).json()
            assert shown["state"] == "ready" and shown["serving_pid"] == server.proc.pid

            refused = server.cli("models", "rm", MODEL)  # another process, yet it knows the server serves it
            assert refused.returncode == 1 and "being served" in refused.stderr
            assert (tmp_path / "models" / "hub" / "org" / "tiny-chat" / sha / "model.safetensors").is_file()

            log = server.log()
            for event in ("model.pulling_before_serving", "model.pull_progress", "pull.ready", "engine.ready"):
                assert event in log, event
        finally:
            stop_server(server)
