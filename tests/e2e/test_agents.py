"""The real coding agents against the real server, each once, non-interactively and at their full request size:
OpenAI's Codex CLI over `/v1/responses`, Claude Code over `/v1/messages`
(`make agents` installs both, pinned, into `.agents/`; `make test` runs it first).

The server runs as a user would point an agent at it: auth on with an inference key, a tiny model at its 128k
context (Claude Code's first request is ~73k tokens of the tiny tokenizer and asks for 32,000 more, which is clamped),
Claude's own model names reaching it through `gateway.model_aliases`. Its output is capped small: random weights
seldom stop by themselves.

The model is the tiny one's tokenizer and chat template over one layer of one attention head. What is under test is
the protocol, and attention over a 73k-token prompt costs its square: the plain tiny model (two layers of four heads)
took 230 s for Claude Code's one request on a CPU with AVX2 only, a tenth of the whole suite's time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import Server, make_key, start_server, stop_server

AGENTS = Path(__file__).resolve().parents[2] / ".agents" / "node_modules" / ".bin"
CLAUDE_MODEL = "claude-sonnet-4-5"  # one of Claude Code's own names: the alias takes it to the tiny model
# Claude Code's one request carries about 72,700 prompt tokens (its system prompt and tools in the tiny model's
# tokenizer). Under pytest's own 600 s, with room to say why.
AGENT_TIMEOUT_S = 540


def _agent(name: str) -> Path:
    if shutil.which("node") is None:
        pytest.skip("no Node on this machine: `make agents` installs it from the machine's packages where it can")
    path = AGENTS / name
    if not path.exists():
        pytest.skip(f"{name} is not installed: `make agents` installs it from the npm registry")
    return path


@pytest.fixture(scope="module")
def agent_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model's tokenizer and template over one layer of one attention head, random weights (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = tmp_path_factory.mktemp("models") / "tiny-agent"
    shutil.copytree(tiny_model_dir, dest, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = config.num_attention_heads = config.num_key_value_heads = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(dest, safe_serialization=True)
    return dest


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory, agent_model_dir: Path) -> Iterator[tuple[Server, str]]:
    home = tmp_path_factory.mktemp("agents")
    key = make_key(os.environ | {"BITINGLIP_HOME": str(home), "BITINGLIP_ENV": "test"}, "--name", "agents")
    srv = start_server(
        home,
        "",
        BITINGLIP_GATEWAY__AUTH="true",
        BITINGLIP_CLUSTER__DEPLOYMENTS="@json " + json.dumps([{"model": str(agent_model_dir), "name": "tiny"}]),
        BITINGLIP_CLUSTER__ENGINE__MAX_MODEL_LEN="131072",
        BITINGLIP_GATEWAY__MODEL_ALIASES="@json " + json.dumps({"claude-*": "tiny"}),
        BITINGLIP_GATEWAY__MAX_OUTPUT_TOKENS="24",
    )
    yield srv, key
    stop_server(srv)


def _base_env(home: Path) -> dict[str, str]:
    """Nothing of the test's own environment: a throwaway home, and a PATH that finds node."""
    node = shutil.which("node")
    assert node is not None
    return {"PATH": f"{Path(node).parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def _requests(server: Server, path: str) -> list[dict[str, Any]]:
    """The access lines of the requests the server answered on ``path``."""
    lines = []
    for line in server.log().splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") == "http.request" and event.get("path") == path:
            lines.append(event)
    return lines


def test_codex_answers_over_the_responses_api(agent_server: tuple[Server, str], tmp_path: Path) -> None:
    codex = _agent("codex")
    server, key = agent_server
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        f"""model = "tiny"
model_provider = "local"
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false
[features]
plugins = false
[analytics]
enabled = false
[model_providers.local]
name = "BitingLip"
base_url = "{server.url}/v1"
env_key = "BITINGLIP_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""
    )
    env = _base_env(tmp_path) | {"CODEX_HOME": str(codex_home), "BITINGLIP_KEY": key}
    last = tmp_path / "last.txt"
    args = ["exec", "--skip-git-repo-check", "--ephemeral", "--color", "never", "-o", str(last), "Say hi"]
    done = subprocess.run(
        [str(codex), *args],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT_S,
    )
    assert done.returncode == 0, f"codex exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert last.read_text().strip(), f"codex printed no answer:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    answered = _requests(server, "/v1/responses")
    assert answered and all(line["status"] == 200 for line in answered), answered
    # Its whole request reached the model: the system prompt and nine tools, thousands of tokens.
    assert max(line["prompt_tokens"] for line in answered) > 5_000, answered


def test_claude_code_answers_over_the_messages_api(agent_server: tuple[Server, str], tmp_path: Path) -> None:
    claude = _agent("claude")
    server, key = agent_server
    config = tmp_path / "claude"
    config.mkdir()
    models = {
        name: CLAUDE_MODEL
        for name in (
            "ANTHROPIC_MODEL",
            "ANTHROPIC_SMALL_FAST_MODEL",
            "ANTHROPIC_DEFAULT_OPUS_MODEL",
            "ANTHROPIC_DEFAULT_SONNET_MODEL",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL",
            "CLAUDE_CODE_SUBAGENT_MODEL",
        )
    }
    env = (
        _base_env(tmp_path)
        | models
        | {
            "ANTHROPIC_BASE_URL": server.url,
            "ANTHROPIC_API_KEY": key,
            "CLAUDE_CONFIG_DIR": str(config),
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CODE_MAX_RETRIES": "1",
        }
    )
    args = ["-p", "Say hi", "--model", CLAUDE_MODEL, "--output-format", "text", "--no-session-persistence"]
    done = subprocess.run(
        [str(claude), *args],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=AGENT_TIMEOUT_S,
    )
    assert done.returncode == 0, f"claude exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"claude printed nothing:\n{done.stderr[-3000:]}"
    answered = [line for line in _requests(server, "/v1/messages") if line.get("prompt_tokens")]
    assert answered and all(line["status"] == 200 for line in answered), answered
    # Its whole request (system prompt and 24 tools, ~73k tokens of this tokenizer) reached the tiny model by its
    # alias, its 32,000 clamped to the server's ceiling.
    biggest = max(answered, key=lambda line: line["prompt_tokens"])
    assert biggest["prompt_tokens"] > 50_000 and biggest["model"] == "tiny", biggest
    assert biggest["max_tokens_clamped"].startswith("32000->"), biggest
