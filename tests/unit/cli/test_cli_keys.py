"""`bitinglip keys ...` and `bitinglip usage` as a user runs them: separate processes on one database, no server.

Each process costs about a second to start, so independent commands run side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import rows

BIN = Path(sys.executable).parent / "bitinglip"
KEY = re.compile(r"^bl_([0-9a-f]{12})_[A-Za-z0-9_-]{20,}$")
Run = subprocess.CompletedProcess[str]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    # No architecture cache to seed (unlike test_models_cli.py): these commands never ask vLLM what it serves.
    return {k: v for k, v in os.environ.items() if not k.startswith(("BITINGLIP_", "HF_"))} | {
        "BITINGLIP_ENV": "test",
        "BITINGLIP_HOME": str(tmp_path / "home"),
        "BITINGLIP_DB__URL": f"sqlite+aiosqlite:///{tmp_path}/bitinglip.db",
        "BITINGLIP_MODELS__DIR": str(tmp_path / "models"),
    }


def side_by_side(env: dict[str, str], *commands: Sequence[str]) -> list[Run]:
    children = [
        subprocess.Popen([str(BIN), *c], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    done = []
    for child in children:
        out, err = child.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return done


def cli(env: dict[str, str], *args: str) -> Run:
    return side_by_side(env, args)[0]


def ok(run: Run) -> str:
    assert run.returncode == 0, run.stderr
    return run.stdout


def by_name(out: str) -> dict[str, dict[str, object]]:
    return {k["name"]: k for k in json.loads(out)}


def test_create_shows_the_key_once_and_keeps_only_its_hash(env: dict[str, str], tmp_path: Path) -> None:
    out = ok(cli(env, "keys", "create", "--name", "ci"))
    first, second, *rest = out.splitlines()
    match = KEY.match(first)
    assert match is not None, out
    key, ident = first, match[1]
    assert "will not be shown again" in second
    assert out.count(key) == 1 and f"id:              {ident}" in rest and "name:            ci" in rest

    admin = "keys create --name ops --scope admin --models tiny,,big --rpm 60 --tpm 1000 --max-concurrent 2".split()
    made = json.loads(ok(cli(env, *admin, "--expires", "30d", "--json")))
    assert KEY.match(made["key"]) and made["key"].startswith(made["info"]["prefix"])

    listed = by_name(ok(cli(env, "keys", "list", "--json")))
    assert listed["ci"]["id"] == ident and listed["ci"]["scope"] == "inference" and listed["ci"]["models"] is None
    assert listed["ci"]["rpm"] is None and listed["ci"]["expires_at"] is None and listed["ci"]["state"] == "active"
    ops = listed["ops"]
    assert (ops["scope"], ops["models"], ops["rpm"], ops["tpm"], ops["max_concurrent"]) == (
        "admin",
        ["tiny", "big"],
        60,
        1000,
        2,
    )
    assert abs(float(str(ops["expires_at"])) - (time.time() + 30 * 86400)) < 120
    assert ops == made["info"]

    # Only the hash is stored: the key is nowhere in the database's files.
    with sqlite3.connect(tmp_path / "bitinglip.db") as db:
        assert db.execute("select hash from api_keys where id = ?", (ident,)).fetchone() == (
            hashlib.sha256(key.encode()).hexdigest(),
        )
    secrets = [k.split("_", 2)[2].encode() for k in (key, made["key"])]
    for file in tmp_path.glob("bitinglip.db*"):
        assert not any(s in file.read_bytes() for s in secrets), file


def test_revoke_by_name_or_id_and_what_is_refused(env: dict[str, str]) -> None:
    made = side_by_side(
        env,
        ["keys", "create", "--name", "a", "--json"],
        ["keys", "create", "--name", "b", "--json"],
        ["keys", "create", "--name", "c", "--expires", "2099-12-31", "--json"],
    )
    a, b, c = (json.loads(ok(run)) for run in made)
    # Valid through the date given: it ends at the start of the next UTC day.
    assert c["info"]["expires_at"] == datetime(2100, 1, 1, tzinfo=UTC).timestamp()

    by_a, by_b, ghost, past, rpm = side_by_side(
        env,
        ["keys", "revoke", "a"],
        ["keys", "revoke", b["info"]["id"]],
        ["keys", "revoke", "ghost"],
        ["keys", "create", "--name", "old", "--expires", "2020-01-01"],
        ["keys", "create", "--name", "slow", "--rpm", "0"],
    )
    assert ok(by_a) == f"revoked {a['info']['id']} (a)\n"
    assert ok(by_b) == f"revoked {b['info']['id']} (b)\n"
    assert (ghost.returncode, ghost.stderr) == (1, "bitinglip: no key 'ghost'\n")
    assert past.returncode == 1 and "--expires 2020-01-01 is in the past" in past.stderr
    assert rpm.returncode == 1 and "`rpm` must be at least 1" in rpm.stderr
    assert not past.stdout and not rpm.stdout

    live, every = side_by_side(env, ["keys", "list", "--json"], ["keys", "list", "--all"])
    assert list(by_name(ok(live))) == ["c"]  # revoked keys hidden, refused ones never made
    table = rows(ok(every))
    assert table[0][:3] == ["ID", "NAME", "SCOPE"] and len(table) == 4
    states = {line[1]: line[8] for line in table[1:]}
    assert states == {"a": "revoked", "b": "revoked", "c": "active"}
    assert all(new["key"] not in every.stdout for new in (a, b, c))


def test_usage_sums_by_day_key_and_model(env: dict[str, str], tmp_path: Path) -> None:
    ci = json.loads(ok(cli(env, "keys", "create", "--name", "ci", "--json")))["info"]["id"]
    today = datetime.now(UTC).date()
    day, yesterday, month_ago = (str(today - timedelta(days=n)) for n in (0, 1, 30))
    with sqlite3.connect(tmp_path / "bitinglip.db") as db:
        db.executemany(
            "insert into usage (day, key_id, model, requests, prompt_tokens, completion_tokens, errors)"
            " values (?, ?, ?, ?, ?, ?, ?)",
            [
                (day, ci, "tiny", 1200, 345_678, 9000, 3),
                (yesterday, ci, "big", 2, 20, 30, 0),
                (day, "", "tiny", 5, 50, 60, 1),  # served without a key
                (month_ago, ci, "tiny", 9, 9, 9, 9),  # before the default 7 days
            ],
        )

    whole, table, key, model = side_by_side(
        env,
        ["usage", "--json"],
        ["usage"],
        ["usage", "--key", "ci", "--since", month_ago, "--json"],
        ["usage", "--model", "big", "--json"],
    )
    report = json.loads(ok(whole))
    assert [(r["day"], r["key_id"], r["model"]) for r in report["data"]] == [
        (day, "", "tiny"),
        (day, ci, "tiny"),
        (yesterday, ci, "big"),
    ]
    total = report["total"]
    assert (total["requests"], total["prompt_tokens"], total["completion_tokens"], total["errors"]) == (
        1207,
        345_748,
        9090,
        4,
    )

    lines = rows(ok(table))
    assert lines[0] == ["DAY", "KEY", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "ERRORS"]
    assert lines[2] == [day, f"{ci} (ci)", "tiny", "1,200", "345,678", "9,000", "3"]
    assert lines[-1] == ["total", "1,207", "345,748", "9,090", "4"]
    assert len(lines) == 5

    by_key = json.loads(ok(key))
    assert {r["key_id"] for r in by_key["data"]} == {ci} and by_key["total"]["requests"] == 1211
    by_model = json.loads(ok(model))
    assert [(r["day"], r["model"], r["requests"]) for r in by_model["data"]] == [(yesterday, "big", 2)]
    assert by_model["total"]["prompt_tokens"] == 20
