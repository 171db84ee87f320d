"""The project's own CLI against the same database as the running server, and start-up refusals."""

from __future__ import annotations

import json
import subprocess
import time

from bitinglip.models.tiny import TINY_CONTEXT
from e2e.conftest import BIN, MODEL, Server, free_port, server_env


def test_models_list_shows_the_served_model(server: Server) -> None:
    out = server.cli("models", "list", "--json")
    assert out.returncode == 0, out.stderr
    records = {r["name"]: r for r in json.loads(out.stdout)}
    tiny = records[MODEL]
    assert tiny["state"] == "ready" and tiny["architecture"] == "LlamaForCausalLM"
    assert tiny["context_length"] == TINY_CONTEXT and tiny["parameters"] > 1_000_000
    assert tiny["last_used_at"] is not None


def test_models_show_and_unknown(server: Server) -> None:
    shown = server.cli("models", "show", MODEL)
    assert shown.returncode == 0 and "LlamaForCausalLM" in shown.stdout
    missing = server.cli("models", "show", "ghost")
    assert missing.returncode == 1 and "ghost" in missing.stderr


def test_rm_refuses_nothing_it_does_not_know(server: Server) -> None:
    out = server.cli("models", "rm", "ghost")
    assert out.returncode == 1 and "not in the registry" in out.stderr


def test_settings_show_names_each_layer(server: Server) -> None:
    env = server.env | {"BITINGLIP_MODELS__HUB_TOKEN": "hf_supersecretvalue123"}
    out = subprocess.run([str(BIN), "settings", "show"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert rows["server.port"].endswith("env BITINGLIP_SERVER__PORT")
    assert rows["server.host"].split()[-1].endswith("default.toml")
    assert rows["server.log_format"].split()[-1].endswith("test.toml")
    assert rows["cluster.startup_timeout_s"].endswith("defaults")
    assert "supersecret" not in out.stdout and "(masked)" in rows["models.hub_token"]


def test_serve_refuses_an_unknown_engine_argument_before_binding(tmp_path, tiny_model_dir) -> None:
    env = server_env(tmp_path, tiny_model_dir, free_port()) | {"BITINGLIP_CLUSTER__ENGINE__MAX_MODEL_LENGTH": "64"}
    began = time.monotonic()
    out = subprocess.run([str(BIN), "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cluster.engine.max_model_length" in out.stderr and "max_model_len" in out.stderr
    assert time.monotonic() - began < 60


def test_serve_refuses_a_wrong_type_naming_the_layer(tmp_path, tiny_model_dir) -> None:
    env = server_env(tmp_path, tiny_model_dir, free_port()) | {"BITINGLIP_SERVER__PORT": "eighty"}
    out = subprocess.run([str(BIN), "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "server.port" in out.stderr and "BITINGLIP_SERVER__PORT" in out.stderr
