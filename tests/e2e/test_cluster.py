"""Several deployments in one server, with the real CPU engine: two models answering at once, a placement
refusal, an engine killed and restarted while the other model serves on, on-demand loads, eviction of the least
recently used, idle put-away, the CLI over HTTP, and an orphan left by a dead server reaped at start.

One server for the module. Every engine is estimated at 1 GiB overhead + its KV cache + the tiny weights (the
KV cache sized to what the model can use, 8 sequences of 512 tokens at 1 KiB each: 4 MiB, under the 256 MiB
setting), and the CPU budget holds three of them: alpha (declared, pinned), beta (declared, keep_alive 10m) and
one more.
Tests run in file order and build on each other's state (what is loaded, what was used last).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bitinglip.cluster.reaper import rings_of
from e2e.conftest import Server, start_server, stop_server

GIB = 1024**3
# Requests sent from a process of their own (url, model, [count, max_tokens, n, pid to kill]), one JSON line each as
# they end, so the test process is free to watch the server meanwhile.
LOAD = """
import asyncio, json, os, signal, sys, time
import httpx

async def main(url, model, count="4", max_tokens="500", n="8", kill=None):
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def one():
            body = {"model": model, "prompt": "a", "max_tokens": int(max_tokens), "n": int(n), "ignore_eos": True}
            r = await client.post("/v1/completions", json=body)
            kind = r.json()["error"]["type"] if r.status_code != 200 else None
            print(json.dumps({"status": r.status_code, "type": kind}), flush=True)

        async def killer():
            await asyncio.sleep(0.3)
            print(json.dumps({"killed_at": time.time()}), flush=True)
            os.kill(int(kill), signal.SIGKILL)

        await asyncio.gather(*(one() for _ in range(int(count))), *([killer()] if kill else []))

asyncio.run(main(*sys.argv[1:]))
"""


def deployments(server: Server) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in httpx.get(f"{server.url}/api/deployments", timeout=10).json()["data"]}


def complete(server: Server, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "prompt": "Once upon", "max_tokens": 4, **extra}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=300)


def gone(pid: int) -> bool:
    """Exited (a zombie too: it holds no memory, and multiprocessing reaps it when it next starts a process)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(check: Any, timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    raise AssertionError(f"not true after {timeout} s")


@pytest.fixture(scope="module")
def orphan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A stand-in for an engine a SIGKILLed server left behind, written down in the home's run folder as such."""
    home = tmp_path_factory.mktemp("cluster")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], process_group=0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (home / "run").mkdir()
    record = {
        "pid": gone.pid,
        "started": time.time() - 60,
        "engines": [{"deployment": "old", "pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}],
    }
    (home / "run" / f"engines-{gone.pid}.json").write_text(json.dumps(record))
    yield home, proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def cluster(orphan: tuple[Path, subprocess.Popen[bytes]], tiny_model_dir: Path) -> Iterator[Server]:
    home, _ = orphan
    env = os.environ | {"BITINGLIP_HOME": str(home), "BITINGLIP_ENV": "test"}
    for name in ("gamma", "delta"):  # registered, not deployed: they load on demand
        subprocess.run(
            [str(Path(sys.executable).parent / "bitinglip"), "models", "import", str(tiny_model_dir), "--name", name],
            env=env,
            check=True,
            capture_output=True,
        )
    declared = [
        {"model": str(tiny_model_dir), "name": "alpha"},
        {"model": str(tiny_model_dir), "name": "beta", "keep_alive": "10m"},
    ]
    srv = start_server(
        home,
        "",
        BITINGLIP_CLUSTER__DEPLOYMENTS="@json " + json.dumps(declared),
        BITINGLIP_CLUSTER__ENGINE='@json {"max_model_len": 512, "max_num_seqs": 8}',
        BITINGLIP_CLUSTER__KV_CACHE_GIB="0.25",
        BITINGLIP_CLUSTER__ENGINE_OVERHEAD_GIB="1.0",
        BITINGLIP_CLUSTER__CPU_MEMORY_BUDGET_GIB="3.9",
        BITINGLIP_CLUSTER__RESTART_BACKOFF_S="0.5",
    )
    yield srv
    stop_server(srv)


def test_an_engine_left_by_a_dead_server_is_reaped_at_start(
    cluster: Server, orphan: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    _, proc = orphan
    assert proc.wait(timeout=10) is not None
    reaped = [json.loads(line) for line in cluster.log().splitlines() if '"engine.orphan_reaped"' in line]
    assert reaped and reaped[0]["pid"] == proc.pid


def test_two_deployments_answer_at_once(cluster: Server) -> None:
    client = cluster.openai()
    answers: dict[str, str] = {}

    def ask(model: str) -> None:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=64, extra_body={"ignore_eos": True}
        )
        answers[model] = reply.model

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("alpha", "beta", "alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {"alpha": "alpha", "beta": "beta"}
    listed = {m.id: m for m in client.models.list().data}
    assert {"alpha", "beta", "gamma", "delta"} <= set(listed)
    assert listed["gamma"].model_extra["status"] == "on_demand"
    state = deployments(cluster)
    for name in ("alpha", "beta"):
        d = state[name]
        assert d["state"] == "ready" and d["device_kind"] == "cpu" and d["declared"] is True
        assert d["memory"]["kv_cache_bytes"] == 8 * 512 * 1024 and d["memory"]["overhead_bytes"] == GIB
        assert d["stats"]["tokens_generated"] >= 128 and d["stats"]["requests"] >= 2
        assert d["limits"]["max_concurrency"] == 8 and d["max_model_len"] == 512
    assert state["alpha"]["keep_alive_s"] is None and state["beta"]["keep_alive_s"] == 600
    held = wait_for(lambda: deployments(cluster)["alpha"]["memory"]["held_bytes"], 20)
    assert GIB // 4 < held < 6 * GIB  # measured from the engine processes


def test_a_deployment_that_cannot_fit_is_refused_with_the_shortfall(cluster: Server) -> None:
    body = {"model": "gamma", "name": "huge", "engine": {"kv_cache_memory_bytes": 64 * GIB}}
    r = httpx.post(f"{cluster.url}/api/deployments", json=body, timeout=30)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "insufficient_memory"
    assert "not enough memory for deployment huge" in error["message"] and "short by" in error["message"]
    assert "held by alpha" in error["message"] and "bytes" in error["message"]
    assert "huge" not in deployments(cluster)
    cli = cluster.cli(
        "deploy", "gamma", "--name", "huge", "--engine", f"kv_cache_memory_bytes={64 * GIB}", "--url", cluster.url
    )
    assert cli.returncode == 1 and "short by" in cli.stderr


def test_a_killed_engine_fails_its_requests_at_once_and_is_restarted(cluster: Server) -> None:
    (pid,) = deployments(cluster)["beta"]["replicas"][0]["pids"]
    rings = rings_of(pid)  # vLLM's shared-memory rings between the engine core and its worker
    assert rings
    # Four requests of 8 x 500 tokens: the engine runs one at a time (max_num_seqs 8) and queues the others, seconds
    # of work; the loading process kills the engine core 0.3 s after sending them, while they are in the engine.
    load = subprocess.Popen(
        [sys.executable, "-c", LOAD, cluster.url, "beta", "4", "500", "8", str(pid)], stdout=subprocess.PIPE, text=True
    )
    lines = [json.loads(line) for line in load.communicate(timeout=60)[0].splitlines()]
    (killed,) = [line["killed_at"] for line in lines if "killed_at" in line]
    ended = [line for line in lines if "status" in line]
    cut = [e for e in ended if e["status"] != 200]  # a request the engine finished before the kill answers 200
    assert len(ended) == 4 and cut and all(e["status"] == 503 for e in cut), ended
    assert {e["type"] for e in cut} == {"service_unavailable"}
    # Timed where it happens, by the server's access log: this machine's 2 cores are busy with the engine and
    # a client process may get its answer late.
    answered = [
        datetime.fromisoformat(event["timestamp"]).timestamp()
        for event in map(json.loads, (line for line in cluster.log().splitlines() if line.startswith("{")))
        if event.get("event") == "http.request" and event.get("path") == "/v1/completions" and event["status"] == 503
    ]
    assert len(answered) == len(cut) and max(answered) - killed < 1.0, (answered, killed)
    refused = complete(cluster, "beta")  # a new request, while the engine is restarted
    assert refused.status_code == 503 and refused.headers["Retry-After"] and refused.elapsed.total_seconds() < 1.0
    assert complete(cluster, "alpha").status_code == 200  # the other model is unaffected
    wait_for(lambda: deployments(cluster)["beta"]["state"] == "loading", 5)  # restarting
    wait_for(lambda: deployments(cluster)["beta"]["state"] == "ready", 180)
    assert complete(cluster, "beta").status_code == 200
    replica = deployments(cluster)["beta"]["replicas"][0]
    assert replica["restarts"] == 1 and replica["last_restart"] == "the engine core process died"
    assert replica["pids"] != [pid] and gone(pid)
    # The killed engine unlinked none of its rings itself; the server did, once it saw the engine go.
    assert not [name for name in rings if Path("/dev/shm", name).exists()], rings


def test_a_registered_model_loads_on_demand_showing_loading_meanwhile(cluster: Server) -> None:
    began = time.monotonic()
    request = subprocess.Popen(
        [sys.executable, "-c", LOAD, cluster.url, "gamma", "1", "4", "1"], stdout=subprocess.PIPE, text=True
    )
    seen: list[float] = []
    while request.poll() is None:  # the request waits while the model loads; meanwhile the API says so
        d = deployments(cluster).get("gamma")
        if d and d["state"] == "loading" and d["loading_for_s"] is not None:
            seen.append(d["loading_for_s"])
        time.sleep(0.5)
    waited = time.monotonic() - began
    (answer,) = [json.loads(line) for line in request.communicate()[0].splitlines()]
    assert answer["status"] == 200
    assert seen and max(seen) > 1.0 and max(seen) <= waited + 1
    d = deployments(cluster)["gamma"]
    assert d["state"] == "ready" and d["declared"] is False and d["keep_alive_s"] == 300


def test_the_least_recently_used_idle_deployment_is_evicted_and_idle_ones_are_put_away(cluster: Server) -> None:
    assert complete(cluster, "beta").status_code == 200  # beta is now used more recently than gamma
    # delta needs a fourth engine's room: gamma (idle, least recently used) goes; alpha is pinned, beta more recent.
    r = complete(cluster, "delta", keep_alive="3s")
    assert r.status_code == 200
    state = deployments(cluster)
    assert state["gamma"]["state"] == "stopped" and state["gamma"]["reason"] == "evicted to make room for delta"
    assert state["beta"]["state"] == "ready" and state["alpha"]["state"] == "ready"
    (delta_pid,) = state["delta"]["replicas"][0]["pids"]
    assert state["delta"]["keep_alive_s"] == 3 and state["delta"]["unloads_in_s"] <= 3
    # then delta, idle for its keep_alive, is stopped (the CPU build cannot sleep) and its engine is gone
    wait_for(lambda: deployments(cluster)["delta"]["state"] == "stopped", 30)
    assert deployments(cluster)["delta"]["reason"].startswith("idle for")
    wait_for(lambda: gone(delta_pid), 30)


def test_the_cli_shows_deployments_and_devices_and_undeploys(cluster: Server) -> None:
    ps = cluster.cli("ps", "--url", cluster.url)
    assert ps.returncode == 0, ps.stderr
    rows = {line.split()[0]: line for line in ps.stdout.splitlines()[1:]}
    assert "forever" in rows["alpha"] and "ready" in rows["beta"] and "stopped" in rows["delta"]
    devices = json.loads(cluster.cli("cluster", "devices", "--json", "--url", cluster.url).stdout)
    assert devices[-1]["kind"] == "cpu" and devices[-1]["memory_free_bytes"] > 0
    gone = cluster.cli("undeploy", "delta", "--url", cluster.url, timeout=120)
    assert gone.returncode == 0, gone.stderr
    assert "delta" not in deployments(cluster)
    assert httpx.get(f"{cluster.url}/api/deployments/delta").status_code == 404
    assert httpx.get(f"{cluster.url}/ready").status_code == 200
