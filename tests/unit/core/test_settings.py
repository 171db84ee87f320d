"""Settings layers, their order, and the errors that stop start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitinglip.core import SettingsError, describe, load_settings


@pytest.fixture
def layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in __import__("os").environ if k.startswith("BITINGLIP_")]:
        monkeypatch.delenv(key)
    (tmp_path / "default.toml").write_text(
        '[server]\nport = 8000\nhost = "0.0.0.0"\n[cluster.engine]\nmax_model_len = 512\n'
    )
    (tmp_path / "staging.toml").write_text("[server]\nport = 8100\n")
    (tmp_path / "local.toml").write_text('[cluster.engine]\ndtype = "float32"\n')
    return tmp_path


def test_layers_apply_lowest_first_and_remember_their_source(layers: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITINGLIP_CLUSTER__ENGINE__ENFORCE_EAGER", "true")
    loaded = load_settings(env="staging", directory=layers)
    s = loaded.settings
    assert s.env == "staging"
    assert s.server.port == 8100 and s.server.host == "0.0.0.0"
    assert s.cluster.engine == {"max_model_len": 512, "dtype": "float32", "enforce_eager": True}
    assert loaded.sources["server.port"] == str(layers / "staging.toml")
    assert loaded.sources["server.host"] == str(layers / "default.toml")
    assert loaded.sources["cluster.engine.dtype"] == str(layers / "local.toml")
    assert loaded.sources["cluster.engine.enforce_eager"] == "env BITINGLIP_CLUSTER__ENGINE__ENFORCE_EAGER"


def test_environment_beats_files_and_cli_beats_environment(layers: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITINGLIP_SERVER__PORT", "9000")
    assert load_settings(env="staging", directory=layers).settings.server.port == 9000
    loaded = load_settings({"server": {"port": 9100}}, env="staging", directory=layers)
    assert loaded.settings.server.port == 9100 and loaded.sources["server.port"] == "cli"


def test_defaults_fill_what_no_layer_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITINGLIP_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    loaded = load_settings(env="none", directory=tmp_path)
    assert loaded.home == tmp_path / "xdg" / "bitinglip"
    assert loaded.settings.models.dir == str(tmp_path / "xdg" / "bitinglip" / "models")
    assert loaded.settings.db.url == f"sqlite+aiosqlite:///{tmp_path}/xdg/bitinglip/bitinglip.db"
    rows = {key: (value, layer) for key, value, layer in describe(loaded)}
    assert rows["models.dir"][1] == "defaults (under the home)"
    assert rows["home"] == (f'"{tmp_path}/xdg/bitinglip"', "default (XDG data directory)")
    assert rows["server.port"][1] == "defaults"


def test_the_home_anchors_relative_paths_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("BITINGLIP_HOME", str(home))
    monkeypatch.setenv("BITINGLIP_MODELS__DIR", "weights")
    monkeypatch.setenv("BITINGLIP_DB__URL", "sqlite+aiosqlite:///state/bl.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_settings(env="none")
    assert loaded.settings.models.dir == str(home / "weights")
    assert loaded.settings.db.url == f"sqlite+aiosqlite:///{home}/state/bl.db"
    monkeypatch.setenv("BITINGLIP_MODELS__DIR", "/abs/models")
    assert load_settings(env="none").settings.models.dir == "/abs/models"


def test_settings_are_searched_in_the_env_dir_then_here_then_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("BITINGLIP_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "home"
    (home / "settings").mkdir(parents=True)
    (home / "settings" / "default.toml").write_text("[server]\nport = 7001\n")
    monkeypatch.setenv("BITINGLIP_HOME", str(home))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    loaded = load_settings(env="none")
    assert loaded.settings.server.port == 7001 and loaded.settings_dir == home / "settings"
    (cwd / "settings").mkdir()
    (cwd / "settings" / "default.toml").write_text("[server]\nport = 7002\n")
    assert load_settings(env="none").settings.server.port == 7002
    named = tmp_path / "named"
    named.mkdir()
    (named / "default.toml").write_text("[server]\nport = 7003\n")
    monkeypatch.setenv("BITINGLIP_SETTINGS_DIR", str(named))
    loaded = load_settings(env="none")
    assert loaded.settings.server.port == 7003
    assert {k: layer for k, _, layer in describe(loaded)}["settings_dir"] == "env BITINGLIP_SETTINGS_DIR"


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("BITINGLIP_SERVER__PORT", "abc", "setting `server.port` (from env BITINGLIP_SERVER__PORT): Expected `int`"),
        ("BITINGLIP_SERVER__PROT", "1", "setting `server.prot` (from env BITINGLIP_SERVER__PROT): unknown key"),
        ("BITINGLIP_SERVER__LOG_LEVEL", "loud", "setting `server.log_level`"),
        ("BITINGLIP_NOPE__X", "1", "setting `nope` (from env BITINGLIP_NOPE__X): unknown key"),
    ],
)
def test_bad_values_name_key_and_layer(
    layers: Path, monkeypatch: pytest.MonkeyPatch, env: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as err:
        load_settings(env="staging", directory=layers)
    assert fragment in err.value.message


def test_a_bad_file_value_names_the_file(layers: Path) -> None:
    (layers / "local.toml").write_text('[models]\noffline = "sometimes"\n')
    with pytest.raises(SettingsError) as err:
        load_settings(env="staging", directory=layers)
    assert "models.offline" in err.value.message and "local.toml" in err.value.message


def test_secrets_are_masked(layers: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITINGLIP_MODELS__HUB_TOKEN", "hf_abcdefghijklmnop")
    rows = {key: value for key, value, _ in describe(load_settings(env="staging", directory=layers))}
    assert "abcdefghijklmnop" not in rows["models.hub_token"]
    assert "masked" in rows["models.hub_token"]
    assert rows["server.port"] == "8100"


def test_the_clis_own_variables_are_not_settings(layers: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BITINGLIP_URL (the server a CLI command talks to) and BITINGLIP_API_KEY broke every command that reads the
    settings ("unknown key")."""
    monkeypatch.setenv("BITINGLIP_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BITINGLIP_API_KEY", "bl_secret")
    loaded = load_settings(directory=layers)
    assert loaded.settings.server.port == 8000 and not any("url" in key or "api_key" in key for key in loaded.sources)
    monkeypatch.setenv("BITINGLIP_SERVR__PORT", "1")  # a typo is still refused
    with pytest.raises(SettingsError, match="servr"):
        load_settings(directory=layers)
