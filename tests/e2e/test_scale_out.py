"""Two servers on one PostgreSQL database, as two machines behind a load balancer would run: A serves the tiny
chat model, B the tiny embedding model (and loads nothing on demand). Keys, limits, usage, batches and files are
shared; each lists the other; B forwards chat to A; a batch made on B runs on A's engine, and survives B's
kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bitinglip.cluster.reaper import EngineRecords
from e2e.conftest import BIN, Server, launch_server, make_key, server_env, stop_server, wait_ready

SHARED = {
    "BITINGLIP_GATEWAY__AUTH": "true",
    "BITINGLIP_GATEWAY__KEY_CACHE_S": "1",
    "BITINGLIP_GATEWAY__USAGE_FLUSH_S": "0.5",
    "BITINGLIP_CLUSTER__HEARTBEAT_S": "1",
}


@dataclass
class Pair:
    a: Server
    b: Server
    admin: str
    model: str  # A's deployment
    embedding: str  # B's

    def api(self, server: Server, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key or self.admin}"}, timeout=60)

    def openai(self, server: Server, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or self.admin, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_embedding_dir: Path, postgres_server: Any
) -> Iterator[Pair]:
    url = postgres_server.new_url()
    homes = [tmp_path_factory.mktemp(name) for name in ("instance-a", "instance-b")]
    shared = SHARED | {"BITINGLIP_DB__URL": url}
    # The first key, made by the CLI on the shared database before either server starts.
    admin = make_key(server_env(homes[0], "", 0) | shared, "--name", "admin", "--scope", "admin")
    # Both at once, as a rollout starts them: the schema check at start takes its lock, and neither waits long.
    a = launch_server(homes[0], tiny_model_dir, **shared)
    b = launch_server(homes[1], tiny_embedding_dir, BITINGLIP_CLUSTER__LOAD_ON_DEMAND="false", **shared)
    try:
        wait_ready(a)
        wait_ready(b)
    except BaseException:
        stop_server(b)
        stop_server(a)
        raise
    try:
        yield Pair(a, b, admin, tiny_model_dir.name, tiny_embedding_dir.name)
    finally:
        stop_server(b)
        stop_server(a)
        for home in homes:  # what the next server in each home would do first: a killed engine's leftovers go
            EngineRecords(home / "run").reap_orphans()


def instances(pair: Pair, server: Server) -> list[dict[str, Any]]:
    with pair.api(server) as api:
        answer = api.get("/api/cluster/instances")
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def test_each_instance_lists_both_and_what_each_serves(pair: Pair) -> None:
    deadline = time.monotonic() + 10  # a deployment's state reaches the table with the next heartbeat (1 s here)
    while True:
        seen_from_b = instances(pair, pair.b)
        if {d["state"] for i in seen_from_b for d in i["deployments"]} == {"ready"}:
            break
        assert time.monotonic() < deadline, seen_from_b
        time.sleep(0.2)
    assert [i["this"] for i in seen_from_b] == [True, False]
    assert [i["url"] for i in seen_from_b] == [pair.b.url, pair.a.url]
    assert [(d["name"], d["state"]) for d in seen_from_b[0]["deployments"]] == [(pair.embedding, "ready")]
    assert [(d["name"], d["state"]) for d in seen_from_b[1]["deployments"]] == [(pair.model, "ready")]
    assert [i["url"] for i in instances(pair, pair.a)] == [pair.a.url, pair.b.url]
    with pair.api(pair.a) as api:
        assert [i["url"] for i in api.get("/api/cluster").json()["instances"]] == [pair.a.url, pair.b.url]

    env = pair.b.env | {"BITINGLIP_API_KEY": pair.admin}
    ps = subprocess.run([str(BIN), "ps", "--url", pair.b.url], env=env, capture_output=True, text=True, timeout=60)
    assert ps.returncode == 0, ps.stderr
    assert "2 instances on this database" in ps.stdout and pair.a.url in ps.stdout


def test_a_key_made_on_one_works_on_the_other_until_revoked_there(pair: Pair) -> None:
    with pair.api(pair.a) as api:
        made = api.post("/api/keys", json={"name": "team", "scope": "inference"})
        assert made.status_code == 201, made.text
    key = made.json()["key"]
    with pair.api(pair.b, key) as api:
        assert api.get("/v1/models").status_code == 200  # B takes the key A made
    with pair.api(pair.b) as api:
        assert api.delete(f"/api/keys/{made.json()['info']['id']}").status_code == 200  # revoked on B
    deadline = time.monotonic() + 10
    with pair.api(pair.a, key) as api:
        while (status := api.get("/v1/models").status_code) == 200:
            assert time.monotonic() < deadline, "A still takes the key revoked on B"
            time.sleep(0.2)
    assert status == 401


def test_a_request_for_a_model_only_the_other_serves_is_forwarded_and_streams(pair: Pair) -> None:
    on_b = pair.openai(pair.b)
    whole = on_b.with_options(default_headers={"X-Request-ID": "via-b-1"}).chat.completions.with_raw_response.create(
        model=pair.model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert whole.headers["x-request-id"] == "via-b-1"  # A answered it under the caller's id
    assert whole.parse().model == pair.model and whole.parse().usage is not None
    chunks = list(
        on_b.chat.completions.create(
            model=pair.model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) >= 3 and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    # A's access line has the request: it served it, and counts it against the key there, taking the key as B
    # checked it (B's vouch) rather than checking it again.
    b_id = next(i["id"] for i in instances(pair, pair.b) if i["this"])
    access = [line for line in pair.a.log().splitlines() if "via-b-1" in line and "vouched_by" in line]
    assert access and b_id in access[0], pair.a.log()[-3000:]
    with pair.api(pair.a) as api:
        limited = api.post("/api/keys", json={"name": "limited", "rpm": 1000}).json()["key"]
    with pair.api(pair.b, limited) as api:
        body = {"model": pair.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        answer = api.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    # The serving instance's rate-limit headers, once: the forwarding one adds none of its own.
    assert answer.headers.get_list("x-ratelimit-limit-requests") == ["1000"]
    assert answer.headers.get_list("x-ratelimit-remaining-requests") == ["999"]
    with pytest.raises(openai.NotFoundError):  # a model nobody serves: B's own answer
        on_b.chat.completions.create(model="nobody-serves-this", messages=[{"role": "user", "content": "hi"}])


def test_a_keys_requests_per_minute_hold_across_both_instances(pair: Pair) -> None:
    """rpm 10, and 20 requests spread over both (chat served by A, embeddings by B): exactly 10 answered."""
    with pair.api(pair.a) as api:
        made = api.post("/api/keys", json={"name": "rpm-10", "rpm": 10})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    statuses, retry_after = [], []
    with pair.api(pair.a, key) as on_a, pair.api(pair.b, key) as on_b:
        for n in range(20):
            if n % 2:
                body = {"model": pair.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
                answer = on_a.post("/v1/chat/completions", json=body)
            else:
                answer = on_b.post("/v1/embeddings", json={"model": pair.embedding, "input": "hi"})
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                retry_after.append(int(answer.headers["retry-after"]))
                assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert statuses.count(200) == 10 and statuses.count(429) == 10, statuses
    assert all(1 <= s <= 60 for s in retry_after)


def batch_lines(model: str, n: int) -> bytes:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"n{i}"}], "max_tokens": 2},
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


def wait_ended(client: openai.OpenAI, batch_id: str, timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while (found := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, f"batch {batch_id} still {found.status}"
        time.sleep(0.5)
    return found


def output_ids(client: openai.OpenAI, file_id: str) -> list[str]:
    text = client.files.content(file_id).text
    return [json.loads(line)["custom_id"] for line in text.splitlines()]


def test_a_batch_made_on_one_runs_on_the_other_and_both_read_it(pair: Pair) -> None:
    on_a, on_b = pair.openai(pair.a), pair.openai(pair.b)
    usage_before = on_a_usage(pair)
    upload = on_b.files.create(file=("in.jsonl", batch_lines(pair.model, 40)), purpose="batch")
    made = on_b.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    ended = wait_ended(on_b, made.id)  # B has no engine: A's queue ran every line
    assert ended.status == "completed" and ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (40, 0)
    assert ended.output_file_id is not None
    # The output file was written on A; B has no shared filesystem with it, and reads it from the database.
    assert sorted(output_ids(on_b, ended.output_file_id)) == sorted(f"line-{i}" for i in range(40))
    assert on_a.batches.retrieve(made.id).output_file_id == ended.output_file_id
    assert output_ids(on_a, ended.output_file_id) == output_ids(on_b, ended.output_file_id)
    # Usage is one ledger: A recorded the 40 lines, and B's report says the same.
    deadline = time.monotonic() + 10
    while on_a_usage(pair) - usage_before < 40:
        assert time.monotonic() < deadline, "the batch's usage never reached the shared ledger"
        time.sleep(0.2)
    with pair.api(pair.a) as a, pair.api(pair.b) as b:
        assert a.get("/api/usage").json()["total"] == b.get("/api/usage").json()["total"]


def on_a_usage(pair: Pair) -> int:
    with pair.api(pair.a) as api:
        requests: int = api.get("/api/usage").json()["total"]["requests"]
        return requests


def test_a_batch_outlives_a_kill_9_of_the_instance_that_made_it(pair: Pair) -> None:
    """1,000 lines made on B; B is killed at once (no goodbye, its row left behind): A runs every line exactly
    once, B drops out of A's list after three missed heartbeats, and the batch reads whole from A."""
    on_b, on_a = pair.openai(pair.b), pair.openai(pair.a)
    upload = on_b.files.create(file=("big.jsonl", batch_lines(pair.model, 1000)), purpose="batch")
    made = on_b.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    pair.b.proc.send_signal(signal.SIGKILL)
    pair.b.proc.wait(timeout=30)
    ended = wait_ended(on_a, made.id, timeout_s=420)
    assert ended.status == "completed" and ended.request_counts is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (1000, 0)
    assert ended.output_file_id is not None
    ids = output_ids(on_a, ended.output_file_id)
    assert len(ids) == 1000 and set(ids) == {f"line-{i}" for i in range(1000)}  # each exactly once
    deadline = time.monotonic() + 10
    while len(instances(pair, pair.a)) != 1:
        assert time.monotonic() < deadline, "the killed instance is still listed"
        time.sleep(0.5)
