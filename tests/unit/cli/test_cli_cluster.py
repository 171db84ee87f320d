"""`bitinglip ps | deploy | undeploy | cluster devices` against a stand-in server (httpx.MockTransport)."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import URL, StandIn, closed_url, error, no_server, rows, run

from bitinglip.cli import main, tables

MiB, GiB = 1024**2, 1024**3


def deployment(name: str, **changes: Any) -> dict[str, Any]:
    """A DeploymentStatus as the server sends it (cluster API spec)."""
    status: dict[str, Any] = {
        "name": name,
        "model": "org/tiny-chat",
        "path": f"/data/models/hub/org/tiny-chat/3f2c1e0/{name}",
        "state": "ready",
        "reason": None,
        "declared": False,
        "device_kind": "gpu",
        "devices": [0, 1],
        "replicas": [{"index": 0, "state": "ready", "pids": [4242], "restarts": 0, "error": None}],
        "keep_alive_s": 300.0,
        "unloads_at": "2025-06-01T12:04:05Z",
        "unloads_in_s": 245.2,
        "loading_for_s": None,
        "uptime_s": 55.0,
        "last_used": "2025-06-01T11:59:05Z",
        "memory": {
            "estimate_bytes": 2_400_000_000,
            "weights_bytes": 1_100_000_000,
            "kv_cache_bytes": 1_073_741_824,
            "overhead_bytes": 226_258_176,
            "held_bytes": 2_512_000_000,
        },
        "stats": {
            "in_flight": 3,
            "running": 2,
            "waiting": 1,
            "kv_cache_usage": 0.12,
            "tokens_generated": 18_204,
            "requests": 96,
        },
        "limits": {"max_concurrency": 256, "max_queue": 1024},
        "max_model_len": 4096,
        "engine_args": {"max_model_len": 4096, "tensor_parallel_size": 2},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(status.get(key), dict):
            status[key] = {**status[key], **value}
        else:
            status[key] = value
    return status


READY = deployment("chat")
LOADING = deployment(
    "tiny",
    model="tiny",
    state="loading",
    device_kind="cpu",
    devices=[],
    replicas=[{"index": 0, "state": "loading", "pids": [5150], "restarts": 0, "error": None}],
    unloads_at=None,
    unloads_in_s=None,
    loading_for_s=12.4,
    uptime_s=None,
    last_used=None,
    memory={"held_bytes": None, "estimate_bytes": 1_500_000_000, "kv_cache_bytes": 512 * MiB},
    stats={"in_flight": 0, "running": 0, "waiting": 0},
)
FAILED = deployment(
    "big",
    model="org/big-model",
    state="failed",
    reason="engine failed to start: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
    "(GPU 0; 79.10 GiB total capacity)",
    devices=[0],
    unloads_at=None,
    unloads_in_s=None,
    memory={"held_bytes": None},
    stats={"in_flight": 0},
)
FOREVER = deployment(
    "embed", model="org/embedder", declared=True, keep_alive_s=None, unloads_at=None, unloads_in_s=None
)

DEVICES = [
    {
        "kind": "gpu",
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-8f3e2a1c-5b7d-4e0f-9a6b-2c1d0e9f8a7b",
        "memory_total_bytes": 85_520_809_984,
        "memory_used_bytes": 2_631_925_760,
        "memory_free_bytes": 82_888_884_224,
        "cores": None,
        "utilization_percent": 37.0,
        "temperature_c": 41,
        "processes": [{"pid": 4242, "used_memory_bytes": 2_512_000_000, "name": "python"}],
    },
    {
        "kind": "cpu",
        "index": 0,
        "name": "AMD EPYC 7763 64-Core Processor",
        "uuid": None,
        "memory_total_bytes": 137_438_953_472,
        "memory_used_bytes": 20_000_000_000,
        "memory_free_bytes": 117_438_953_472,
        "cores": 16,
        "utilization_percent": None,
        "temperature_c": None,
        "processes": [],
    },
]


# -- ps


def test_ps_table(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    with_adapters = READY | {
        "adapters": ["chat-fr", "chat-sql"],
        "replicas": [READY["replicas"][0] | {"adapters": ["chat-sql"]}],
    }
    server.on("GET", "/api/deployments", httpx.Response(200, json={"data": [with_adapters, LOADING, FAILED, FOREVER]}))
    code, out, err = run(capsys, "ps")
    assert code == 0 and err == ""
    assert server.urls == [URL]
    table = rows(out)
    assert table[0] == ["NAME", "MODEL", "STATE", "DEVICES", "MEMORY", "KV-CACHE", "IN-FLIGHT", "UNTIL", "ADAPTERS"]
    assert table[1] == [
        "chat",
        "org/tiny-chat",
        "ready",
        "gpu 0,1",
        "2.5 GB",
        "1.1 GB",
        "3",
        "4 minutes from now",
        "1/2 loaded: chat-sql",  # of its model's two adapters, the one its engine holds
    ]
    assert table[2][:6] == ["tiny", "tiny", "loading 12s", "cpu", "~1.5 GB", "536.9 MB"]
    name, model, state, devices, memory, _, in_flight, until, adapters = table[3]
    assert adapters == "-"
    assert (name, model, devices, memory, in_flight, until) == ("big", "org/big-model", "gpu 0", "~2.4 GB", "0", "-")
    assert state.startswith("failed: engine failed to start: torch.OutOfMemo") and state.endswith("…")
    assert len(state) == tables.REASON_WIDTH
    assert table[4][-2] == "forever"
    # the columns line up: every cell starts where its header does
    lines = out.splitlines()
    for header in ("MODEL", "STATE", "DEVICES", "MEMORY", "KV-CACHE", "IN-FLIGHT", "UNTIL", "ADAPTERS"):
        at = lines[0].index(header)
        assert all(line[at - 1] == " " and line[at] != " " for line in lines[1:]), header


def test_ps_json_is_the_servers_list(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/api/deployments", httpx.Response(200, json={"data": [READY, LOADING]}))
    code, out, _ = run(capsys, "ps", "--json")
    assert code == 0
    assert json.loads(out) == [READY, LOADING]


def test_ps_with_nothing_deployed(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/api/deployments", httpx.Response(200, json={"data": []}))
    code, out, _ = run(capsys, "ps")
    assert code == 0 and "nothing deployed" in out


def test_url_flag_wins_over_env(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/api/deployments", httpx.Response(200, json={"data": []}))
    assert run(capsys, "ps", "--url", "http://gpu-box:9000/")[0] == 0
    assert server.urls == ["http://gpu-box:9000"]


def test_url_defaults_to_the_settings_server_on_loopback(
    server: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BITINGLIP_URL")
    monkeypatch.setenv("BITINGLIP_SETTINGS_DIR", str(tmp_path))  # no setting files: the defaults, then these
    monkeypatch.setenv("BITINGLIP_SERVER__HOST", "0.0.0.0")
    monkeypatch.setenv("BITINGLIP_SERVER__PORT", "9123")
    server.on("GET", "/api/deployments", httpx.Response(200, json={"data": []}))
    assert run(capsys, "ps")[0] == 0
    assert server.urls == ["http://127.0.0.1:9123"]


# -- deploy


def test_deploy_posts_the_spec_and_waits_until_ready(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    loading = deployment("chat", state="loading", loading_for_s=0.1, unloads_in_s=None, memory={"held_bytes": None})
    later = copy.deepcopy(loading) | {"loading_for_s": 12.6}
    server.on("POST", "/api/deployments", httpx.Response(202, json=loading))
    server.on("GET", "/api/deployments/chat", *(httpx.Response(200, json=s) for s in (loading, later, READY)))
    engine = [
        "max_model_len=4096",
        "enforce-eager=true",
        "dtype=bfloat16",
        'hf_overrides={"rope_theta": 10000}',
        "kv_cache_memory_bytes=268435456",
    ]
    options = "--name chat --devices 0,1 --replicas 1 --keep-alive 5m".split()
    code, out, err = run(capsys, "deploy", "org/tiny-chat", *options, *(a for e in engine for a in ("--engine", e)))
    assert code == 0, err
    assert server.calls() == ["POST /api/deployments"] + ["GET /api/deployments/chat"] * 3
    assert json.loads(server.requests[0].content) == {
        "model": "org/tiny-chat",
        "name": "chat",
        "devices": [0, 1],
        "replicas": 1,
        "keep_alive": "5m",
        "engine": {
            "max_model_len": 4096,
            "enforce_eager": True,
            "dtype": "bfloat16",
            "hf_overrides": {"rope_theta": 10000},
            "kv_cache_memory_bytes": 268435456,
        },
    }
    assert "loading chat … 0s" in err  # not a terminal: one progress line every few seconds
    assert out.strip() == "chat is ready: org/tiny-chat on gpu 0,1, 2.5 GB, unloads after 5m idle"


@pytest.mark.parametrize(("given", "sent"), [("300", 300), ("-1", -1), ("1.5", 1.5), ("30s", "30s")])
def test_deploy_keep_alive_numbers_travel_as_numbers(
    server: StandIn, capsys: pytest.CaptureFixture[str], given: str, sent: object
) -> None:
    server.on("POST", "/api/deployments", httpx.Response(202, json=LOADING))
    code, _, _ = run(capsys, "deploy", "tiny", "--keep-alive", given, "--device-count", "2", "--no-wait")
    assert code == 0
    assert json.loads(server.requests[0].content) == {"model": "tiny", "keep_alive": sent, "device_count": 2}


def test_deploy_no_wait_returns_at_once(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/api/deployments", httpx.Response(202, json=LOADING))
    code, out, _ = run(capsys, "deploy", "tiny", "--no-wait")
    assert code == 0 and out.strip() == "deploying tiny (tiny)"
    assert server.calls() == ["POST /api/deployments"]
    assert json.loads(server.requests[0].content) == {"model": "tiny"}  # the server's defaults for the rest

    code, out, _ = run(capsys, "deploy", "tiny", "--no-wait", "--json")
    assert code == 0 and json.loads(out) == LOADING


def test_deploy_progress_redraws_one_line_on_a_terminal(
    server: StandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    server.on("POST", "/api/deployments", httpx.Response(202, json=LOADING))
    later = LOADING | {"loading_for_s": 75.0}
    server.on("GET", "/api/deployments/tiny", *(httpx.Response(200, json=s) for s in (LOADING, later, FOREVER)))
    code, _, err = run(capsys, "deploy", "tiny")
    assert code == 0
    assert "\rloading tiny … 12s\x1b[K\rloading tiny … 1m15s\x1b[K" in err
    assert err.endswith("\r\x1b[K")  # cleared before the result is printed


def test_a_failed_deployment_exits_1_with_its_reason(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/api/deployments", httpx.Response(202, json=LOADING))
    failed = LOADING | {"state": "failed", "reason": "engine exited with code 1: ValueError: max_model_len too big"}
    server.on("GET", "/api/deployments/tiny", httpx.Response(200, json=LOADING), httpx.Response(200, json=failed))
    code, out, err = run(capsys, "deploy", "tiny")
    assert code == 1 and out == ""
    assert err.endswith("bitinglip: tiny failed: engine exited with code 1: ValueError: max_model_len too big\n")


def test_deploy_gives_up_after_its_timeout(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("POST", "/api/deployments", httpx.Response(202, json=LOADING))
    server.on("GET", "/api/deployments/tiny", httpx.Response(200, json=LOADING))
    code, _, err = run(capsys, "deploy", "tiny", "--timeout", "0")
    assert code == 1 and err.endswith("bitinglip: tiny is still loading after 0s\n")


def test_deploy_refused_prints_the_servers_message(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    message = "not enough free memory for big on gpu 0: needs 81604378624 bytes, 2147483648 short"
    server.on("POST", "/api/deployments", error(409, message, "insufficient_memory"))
    code, out, err = run(capsys, "deploy", "org/big-model", "--devices", "0")
    assert (code, out, err) == (1, "", f"bitinglip: {message}\n")
    assert server.calls() == ["POST /api/deployments"]


def test_deploy_refuses_bad_arguments(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--engine", "max_model_len"], ["--devices", "0,a"]):
        with pytest.raises(SystemExit) as exit:
            main(["deploy", "tiny", *argv])
        assert exit.value.code == 2
    assert server.requests == []


# -- undeploy


def test_undeploy_waits_until_gone(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    draining = READY | {"state": "draining"}
    server.on("DELETE", "/api/deployments/chat", httpx.Response(202, json=draining))
    gone = error(404, "no deployment named chat")
    server.on(
        "GET", "/api/deployments/chat", httpx.Response(200, json=draining), httpx.Response(200, json=draining), gone
    )
    code, out, err = run(capsys, "undeploy", "chat")
    assert code == 0, err
    assert server.calls() == ["DELETE /api/deployments/chat"] + ["GET /api/deployments/chat"] * 3
    assert out.strip() == "undeployed chat"


def test_undeploy_no_wait_and_unknown(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("DELETE", "/api/deployments/chat", httpx.Response(202, json=READY | {"state": "draining"}))
    assert run(capsys, "undeploy", "chat", "--no-wait")[:2] == (0, "undeploying chat\n")
    assert server.calls() == ["DELETE /api/deployments/chat"]
    server.on("DELETE", "/api/deployments/ghost", error(404, "no deployment named ghost"))
    assert run(capsys, "undeploy", "ghost") == (1, "", "bitinglip: no deployment named ghost\n")


# -- cluster devices


def test_devices_table(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/api/cluster/devices", httpx.Response(200, json=DEVICES))
    code, out, _ = run(capsys, "cluster", "devices")
    assert code == 0
    table = rows(out)
    assert table[0] == ["INDEX", "KIND", "NAME", "UUID", "MEMORY", "FREE", "UTIL", "TEMP"]
    assert table[1] == [
        "0",
        "gpu",
        "NVIDIA H100 80GB HBM3",
        "GPU-8f3e2a1c…",
        "2.6 GB / 85.5 GB",
        "82.9 GB",
        "37%",
        "41°C",
    ]
    assert table[2] == ["0", "cpu", "AMD EPYC 7763 64-Core Processor", "-", "20.0 GB / 137.4 GB", "117.4 GB", "-", "-"]

    code, out, _ = run(capsys, "cluster", "devices", "--json")
    assert code == 0 and json.loads(out) == DEVICES


# -- errors


def test_an_error_without_the_envelope(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/api/deployments", httpx.Response(502, text="upstream went away"))
    assert run(capsys, "ps") == (1, "", "bitinglip: 502 Bad Gateway: upstream went away\n")


def test_no_server(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    server.on("GET", "/api/deployments", httpx.ConnectError("[Errno 111] Connection refused"))
    assert run(capsys, "ps") == (1, "", no_server())


def test_no_server_for_real(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = closed_url()
    batch_input = tmp_path / "requests.jsonl"
    batch_input.write_text("{}\n")
    for argv in (
        ["ps"],
        ["deploy", "tiny"],
        ["undeploy", "tiny"],
        ["cluster", "devices"],
        ["tasks", "submit", "--model", "tiny", "--prompt", "hi"],
        ["tasks", "list"],
        ["batches", "submit", str(batch_input)],
        ["batches", "list"],
    ):
        assert run(capsys, *argv, "--url", url) == (1, "", no_server(url)), argv


def test_the_client_commands_never_import_the_app() -> None:
    code = (
        "import sys\n"
        "from bitinglip.cli import main\n"
        "for argv in (['ps'], ['tasks', 'list'], ['batches', 'list']):\n"
        "    assert main([*argv, '--url', 'http://127.0.0.1:9']) == 1\n"
        "heavy = [m for m in ('bitinglip.app', 'bitinglip.tasks', 'vllm', 'torch', 'uvicorn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


class ServeRecorder:
    """`bitinglip serve` up to the point it would listen: the settings the app was built with, and no server.

    `serve` sets up logging for the process (a handler on the root logger writing to the stderr of the moment,
    here pytest's capture, closed after the test): the root logger's handlers and level are put back after."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from bitinglip.cli import serve

        root = logging.getLogger()
        monkeypatch.setattr(root, "handlers", list(root.handlers))
        monkeypatch.setattr(root, "level", root.level)

        self.settings: list[Any] = []
        app = types.ModuleType("bitinglip.app")  # the real one imports vLLM: not needed to see the settings
        vars(app)["create_app"] = lambda loaded: self.settings.append(loaded.settings) or object()
        monkeypatch.setitem(sys.modules, "bitinglip.app", app)

        class Server:
            started = True

            def __init__(self, config: Any) -> None:
                pass

            def run(self) -> None:
                pass

        monkeypatch.setattr(serve, "_server_class", lambda: Server)
        monkeypatch.setattr(serve, "_kill_children", lambda: [])
        monkeypatch.setattr(serve, "_exit_process", lambda code: code)  # the real one ends the process


@pytest.fixture
def declared_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that declare two deployments and the embedding-model shorthand."""
    (tmp_path / "local.toml").write_text(
        '[cluster]\nmodel = "tiny"\nembedding_model = "tiny-embed"\n\n'
        '[[cluster.deployments]]\nmodel = "org/chat"\n\n[[cluster.deployments]]\nmodel = "org/embed"\n'
    )
    monkeypatch.setenv("BITINGLIP_SETTINGS_DIR", str(tmp_path))


def test_serve_model_serves_that_model_alone(
    declared_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = ServeRecorder(monkeypatch)
    assert run(capsys, "serve", "--model", "org/pulled")[0] == 0
    assert run(capsys, "serve", "--model", "")[0] == 0
    assert run(capsys, "serve")[0] == 0
    alone, none, declared = (s.cluster for s in recorder.settings)
    # --model replaces every declared deployment, the embedding model beside the default one too
    assert (alone.model, alone.embedding_model, alone.deployments) == ("org/pulled", "", [])
    assert (none.model, none.embedding_model, none.deployments) == ("", "", [])
    # without it the settings' own stand
    assert [d.model for d in declared.deployments] == ["org/chat", "org/embed"]
    assert declared.embedding_model == "tiny-embed"


def test_serve_help_says_model_replaces_the_declared_deployments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "MODEL serve this model alone" in text and "--model MODEL the same as MODEL" in text
    assert "it replaces the deployments the settings declare" in text and "cluster.embedding_model" in text
    assert "as `vllm serve ORG/NAME` does" in text


def test_serve_takes_the_model_positionally_as_vllm_serve_does(
    declared_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = ServeRecorder(monkeypatch)
    assert run(capsys, "serve", "org/pulled")[0] == 0
    assert run(capsys, "serve", "org/pulled", "--model", "org/pulled", "--port", "9001")[0] == 0  # the same: fine
    assert run(capsys, "serve", "")[0] == 0
    alone, both, none = recorder.settings
    assert (alone.cluster.model, alone.cluster.embedding_model, alone.cluster.deployments) == ("org/pulled", "", [])
    assert (both.cluster.model, both.server.port) == ("org/pulled", 9001)
    assert (none.cluster.model, none.cluster.deployments) == ("", [])


def test_serve_refuses_two_different_models(
    declared_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = ServeRecorder(monkeypatch)
    code, out, err = run(capsys, "serve", "org/a", "--model", "org/b")
    assert (code, out) == (1, "")
    assert err == "bitinglip: two models given: org/a and --model org/b; name one\n"
    assert recorder.settings == []  # refused before anything started


def test_ps_lists_the_other_instances_on_the_database(server: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    now = time.time()
    server.on("GET", "/api/deployments", httpx.Response(200, json={"data": [READY]}))
    instances = [
        {"id": "box-a:41:ab12cd34", "url": "http://box-a:8000", "host": "box-a", "pid": 41, "this": True,
         "started_at": now - 125, "heartbeat_at": now - 2,
         "deployments": [{"name": "chat", "model": "org/tiny-chat", "state": "ready", "adapters": []}]},
        {"id": "box-b:7:ef56ab78", "url": "http://box-b:8000", "host": "box-b", "pid": 7, "this": False,
         "started_at": now - 30, "heartbeat_at": now - 4, "deployments": []},
    ]  # fmt: skip
    server.on("GET", "/api/cluster/instances", httpx.Response(200, json={"data": instances}))
    code, out, _ = run(capsys, "ps")
    assert code == 0
    lines = out.splitlines()
    at = lines.index("2 instances on this database (* this one):")
    assert rows("\n".join(lines[at + 1 :])) == [
        ["INSTANCE", "URL", "UP", "SEEN", "DEPLOYMENTS"],
        ["box-a:41 *", "http://box-a:8000", "2m05s", "2s ago", "chat (ready)"],
        ["box-b:7", "http://box-b:8000", "30s", "4s ago", "-"],
    ]
