"""The generated settings reference (scripts/settings_reference.py) documents every setting as the code has it."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from bitinglip.core import DeploymentSettings, LimitSettings, Settings

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_reference", ROOT / "scripts" / "settings_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(reference: ModuleType) -> dict[str, list[str]]:
    """The page's table rows by key: [key cell, type, default, description]."""
    found: dict[str, list[str]] = {}
    for line in reference.render().splitlines():
        match = re.match(r"\| `([^`]+)`", line)
        if match:
            found[match[1]] = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
    return found


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_leaves(sub, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def test_every_setting_has_a_row_with_a_description(rows: dict[str, list[str]]) -> None:
    keys = set(_leaves(msgspec.to_builtins(Settings())))
    keys |= {f"cluster.deployments[].{f.name}" for f in msgspec.structs.fields(DeploymentSettings)}
    keys |= {f"gateway.model_limits.<name>.{f.name}" for f in msgspec.structs.fields(LimitSettings)}
    assert keys <= set(rows), f"missing from the reference: {sorted(keys - set(rows))}"
    assert set(rows) == keys, f"in the reference but not a setting: {sorted(set(rows) - keys)}"
    for key, (_, kind, _, text) in rows.items():
        assert kind and len(text) > 10, f"{key} has no type or description"


def test_defaults_are_the_structs_with_default_toml_over_them(
    reference: ModuleType, rows: dict[str, list[str]]
) -> None:
    assert rows["server.port"][2] == "`8000`"
    assert rows["server.port"][0] == "`server.port`<br>`BITINGLIP_SERVER__PORT`"
    assert rows["gateway.stream_interval"][1] == 'integer (≥ 1, ≤ 64) or `"auto"`'
    assert rows["cluster.deployments[].model"][2] == "*required*"
    with (ROOT / "settings" / "default.toml").open("rb") as f:
        file_values = _leaves(tomllib.load(f))
    built_in = _leaves(msgspec.to_builtins(Settings()))
    for key, value in file_values.items():
        if value == {}:  # a section with every key commented out
            continue
        row = next(k for k in rows if key == k or key.startswith(f"{k}."))  # a table's keys show in its row
        shown = reference.toml_value(value)
        default = rows[row][2]
        if row == key:
            assert default.startswith(f"`{shown}`"), f"{key}: {default}"
            assert ("(built in:" in default) == (value != built_in[key]), f"{key}: {default}"
        else:
            assert f"{key.removeprefix(row + '.')} = {shown}" in default, f"{key}: {default}"
    assert rows["cluster.embedding_model"][2] == '`"tiny-embed"` (built in: `""`)'
    assert rows["cluster.engine"][2].startswith('`{ max_model_len = 131072, tool_call_parser = "hermes" }`')


class Undocumented(msgspec.Struct, frozen=True):
    # Documented,
    # over two lines.
    fine: int = 1

    bare: int = 2


class Wrapper(msgspec.Struct, frozen=True):
    section: Undocumented = msgspec.field(default_factory=Undocumented)


def test_a_setting_without_a_comment_stops_the_page(reference: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    assert reference.field_comments(Undocumented) == {"fine": "Documented, over two lines.", "bare": ""}
    monkeypatch.setattr(reference, "Settings", Wrapper)
    monkeypatch.setattr(reference, "checkout_defaults", lambda path: Wrapper())
    with pytest.raises(reference.UndocumentedSetting, match=r"`section\.bare`"):
        reference.render()


def test_mkdocs_yml_runs_the_hook_that_adds_the_page() -> None:
    from mkdocs.config import load_config
    from mkdocs.structure.files import Files

    config = load_config(str(ROOT / "mkdocs.yml"))
    files = config.plugins.on_files(Files([]), config=config)  # every hook and plugin, as `mkdocs build` runs them
    page = files.get_file_from_path("reference/settings.md")
    assert page is not None
    assert "| `tasks.lease_s`" in page.content_string
