"""`bitinglip models ...` as a user runs it: a separate process on the same database, against the hub stand-in."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pull_support import TINY, seed_architecture_cache

import hubstub
from bitinglip.models.hub import PARTIAL_DIR

BIN = Path(sys.executable).parent / "bitinglip"


@pytest.fixture
def env(tmp_path: Path, models_dir: Path, stub: hubstub.HubStub) -> dict[str, str]:
    seed_architecture_cache(models_dir)  # or each process would import vLLM (~10 s) to learn what it serves
    return {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "HF_"))} | {
        "BITINGLIP_ENV": "test",
        "BITINGLIP_DB__URL": f"sqlite+aiosqlite:///{tmp_path}/bitinglip.db",
        "BITINGLIP_MODELS__DIR": str(models_dir),
        "BITINGLIP_MODELS__HUB_ENDPOINT": stub.url,
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "models", *args], env=env, capture_output=True, text=True, timeout=60)


def row_state(tmp_path: Path, name: str) -> str:
    with sqlite3.connect(tmp_path / "bitinglip.db") as db:
        return db.execute("select state from models where name = ?", (name,)).fetchone()[0]


def test_a_killed_cli_pull_resumes_where_it_stopped(
    stub: hubstub.HubStub,
    tiny_sha: str,
    tiny_files: dict[str, bytes],
    tmp_path: Path,
    models_dir: Path,
    env: dict[str, str],
) -> None:
    part = models_dir / "hub" / "org" / "tiny-chat" / tiny_sha / PARTIAL_DIR / "model.safetensors.part"
    err = tmp_path / "pull.err"
    stub.throttle_bytes_per_s = 400_000  # ~7 s for the weights
    with err.open("w") as stderr:
        child = subprocess.Popen([str(BIN), "models", "pull", TINY], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    # Killed once it has written part of the weights and shown its progress (one line at a time: no TTY).
    hubstub.kill_when(
        child, lambda: part.exists() and part.stat().st_size >= 200_000 and "%" in err.read_text(), 60, "the weights"
    )
    progress = err.read_text()
    assert f"{TINY} [" in progress and "MB" in progress and "/s" in progress and "left" in progress
    kept = part.stat().st_size
    assert 0 < kept < len(tiny_files["model.safetensors"])
    assert row_state(tmp_path, TINY) == "pulling"  # never ready while half there

    stub.throttle_bytes_per_s = None
    before = len(stub.requests)
    again = cli(env, "pull", TINY)
    assert again.returncode == 0, again.stderr
    assert f"pulled {TINY} main = {tiny_sha}" in again.stdout and "resumed" in again.stdout
    weights = f"/cdn-lfs/{hashlib.sha256(tiny_files['model.safetensors']).hexdigest()}"
    ranges = [h.get("range") for _m, path, h in stub.requests[before:] if path.startswith(weights)]
    assert ranges == [f"bytes={kept}-"]
    assert row_state(tmp_path, TINY) == "ready"

    removed = cli(env, "rm", TINY)
    assert removed.returncode == 0 and f"removed {TINY}" in removed.stdout
    assert not (models_dir / "hub" / "org" / "tiny-chat").exists()


def test_search_and_refusals(stub: hubstub.HubStub, tiny_sha: str, env: dict[str, str]) -> None:
    # Independent commands, run side by side to keep the suite quick.
    runs = {
        name: subprocess.Popen(
            [str(BIN), "models", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, args in {
            "search": ["search", "tiny", "--limit", "5"],
            "bad": ["pull", "../etc"],
            "missing": ["pull", "org/ghost"],
        }.items()
    }
    out = {name: (p.wait(timeout=60), *p.communicate()) for name, p in runs.items()}

    code, stdout, stderr = out["search"]
    assert code == 0, stderr
    header, line = stdout.splitlines()
    assert header.split() == ["ID", "DOWNLOADS", "LIKES", "TASK", "LAST", "MODIFIED", "SERVABLE"]
    assert line.split()[0] == TINY and line.split()[-1] == "yes" and "text-generation" in line
    code, _, stderr = out["bad"]
    assert code == 1 and "'..'" in stderr
    code, _, stderr = out["missing"]
    assert code == 1 and "org/ghost not found on the hub" in stderr
    assert not any("etc" in path for _m, path, _h in stub.requests)  # refused before any request
