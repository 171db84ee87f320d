"""Layered settings: struct defaults, then TOML files, then ``BITINGLIP_*`` environment variables.

Dynaconf reads each layer (TOML files, and environment variables parsed TOML-style, with ``__`` for
nesting). We merge the layers ourselves rather than through one Dynaconf object because we want to know,
for every value, which layer it came from: ``bitinglip settings show`` prints it, and a bad value stops
start-up with the key and its layer named. The merged tree is converted once into frozen msgspec structs
that refuse unknown keys.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec
from dynaconf import Dynaconf

from bitinglip.core.errors import SettingsError, validation_path
from bitinglip.core.settings import LoadedSettings, Settings

ENV_PREFIX = "BITINGLIP"
DEFAULTS_LAYER = "defaults"
SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey")


def home_dir() -> Path:
    """``BITINGLIP_HOME``, else the XDG data directory (``~/.local/share/bitinglip``)."""
    if given := os.environ.get(f"{ENV_PREFIX}_HOME"):
        return Path(given).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser().absolute() / "bitinglip"


def settings_dir(home: Path | None = None) -> Path | None:
    """The first of ``BITINGLIP_SETTINGS_DIR``, ``./settings`` and ``<home>/settings`` that exists."""
    given = os.environ.get(f"{ENV_PREFIX}_SETTINGS_DIR")
    if given:
        return Path(given).expanduser().absolute()  # named explicitly: used even if missing (no files then)
    for candidate in (Path("settings"), (home or home_dir()) / "settings"):
        if candidate.is_dir():
            return candidate.absolute()
    return None


def _resolve_paths(settings: Settings, home: Path) -> Settings:
    """Fill the paths left empty from the home and anchor relative ones there: the working directory never matters."""
    url = settings.db.url or f"sqlite+aiosqlite:///{home / 'bitinglip.db'}"
    prefix, sep, path = url.partition(":///")
    if sep and prefix.startswith("sqlite") and path and path != ":memory:" and not path.startswith("/"):
        url = f"{prefix}:///{home / path}"
    models_dir = Path(settings.models.dir).expanduser() if settings.models.dir else home / "models"
    if not models_dir.is_absolute():
        models_dir = home / models_dir
    files_dir = Path(settings.tasks.files_dir).expanduser() if settings.tasks.files_dir else home / "files"
    if not files_dir.is_absolute():
        files_dir = home / files_dir
    return msgspec.structs.replace(
        settings,
        db=msgspec.structs.replace(settings.db, url=url),
        models=msgspec.structs.replace(settings.models, dir=str(models_dir)),
        tasks=msgspec.structs.replace(settings.tasks, files_dir=str(files_dir)),
    )


def _lower_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    return value


def _read_file_layer(path: Path) -> dict[str, Any]:
    # loaders=[] keeps environment variables out of a file's layer.
    layer = Dynaconf(
        settings_files=[str(path)], environments=False, load_dotenv=False, loaders=[], core_loaders=["TOML"]
    )
    data: dict[str, Any] = _lower_keys(layer.as_dict(internal=False))
    data.pop("load_dotenv", None)
    return data


# BITINGLIP_* variables that are not settings: BITINGLIP_ENV, _SETTINGS_DIR and _HOME pick the layers and the home;
# BITINGLIP_URL and BITINGLIP_API_KEY are the CLI's, for the server it talks to.
NOT_SETTINGS = ("env", "settings_dir", "home", "url", "api_key")


def _read_env_layer() -> dict[str, Any]:
    layer = Dynaconf(envvar_prefix=ENV_PREFIX, environments=False, load_dotenv=False, settings_files=[])
    data: dict[str, Any] = _lower_keys(layer.as_dict(internal=False))
    data.pop("load_dotenv", None)
    # These pick where settings and data live, or are the CLI's own (the server it talks to, the key it sends):
    # they are not setting keys.
    for key in NOT_SETTINGS:
        data.pop(key, None)
    return data


def _merge(into: dict[str, Any], layer: dict[str, Any], name: str, sources: dict[str, str], prefix: str = "") -> None:
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, name, sources, f"{path}.")
        else:
            into[key] = value
            _mark(value, path, name, sources)


def _mark(value: Any, path: str, name: str, sources: dict[str, str]) -> None:
    for stale in [k for k in sources if k == path or k.startswith(f"{path}.")]:
        del sources[stale]
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _mark(sub, f"{path}.{key}", name, sources)
    else:
        sources[path] = name


def _env_layer_names(layer: dict[str, Any], prefix: str = "") -> dict[str, str]:
    names: dict[str, str] = {}
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            names.update(_env_layer_names(value, f"{path}."))
        else:
            names[path] = f"env {ENV_PREFIX}_{path.replace('.', '__').upper()}"
    return names


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, sub in value.items():
            flat.update(_flatten(sub, f"{prefix}.{key}" if prefix else key))
        return flat
    return {prefix: value}


def _key_from_error(message: str) -> tuple[str, str]:
    """Turn msgspec's "... - at `$.server.port`" into ("server.port", "...")."""
    path, text = validation_path(message)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", text)
    if unknown:
        path = f"{path}.{unknown[1]}" if path else unknown[1]
        text = "unknown key"
    return path, text


def _source_of(path: str, sources: dict[str, str]) -> str:
    if path in sources:
        return sources[path]
    for key, name in sources.items():  # a table whose leaves came from one layer
        if key.startswith(f"{path}."):
            return name
    return DEFAULTS_LAYER


def load_settings(
    overrides: dict[str, Any] | None = None, *, env: str | None = None, directory: Path | None = None
) -> LoadedSettings:
    """Read every layer and return typed settings plus where each value came from.

    ``overrides`` is the last layer ("cli"), a nested dict like ``{"server": {"port": 9000}}``.
    Raises SettingsError naming the key and its layer for a wrong type or an unknown key.
    """
    env = env or os.environ.get(f"{ENV_PREFIX}_ENV", "development")
    home = home_dir()
    directory = directory or settings_dir(home)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in ("default.toml", f"{env}.toml", "local.toml"):
        file = directory / name if directory is not None else None
        if file is not None and file.is_file():
            _merge(merged, _read_file_layer(file), str(file), sources)
    env_layer = _read_env_layer()
    env_names = _env_layer_names(env_layer)
    _merge(merged, env_layer, "env", sources)
    sources.update({k: env_names.get(k, v) for k, v in sources.items() if v == "env"})
    if overrides:
        _merge(merged, overrides, "cli", sources)
    merged["env"] = env
    try:
        settings = msgspec.convert(merged, Settings)
    except msgspec.ValidationError as exc:
        path, text = _key_from_error(str(exc))
        raise SettingsError(f"setting `{path}` (from {_source_of(path, sources)}): {text}", param=path) from exc
    return LoadedSettings(settings=_resolve_paths(settings, home), sources=sources, home=home, settings_dir=directory)


def is_secret(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    return any(word in last for word in SECRET_WORDS)


def mask(value: Any) -> str:
    if value in (None, ""):
        return "(unset)"
    text = str(value)
    return "****" if len(text) <= 8 else f"{text[:3]}…{text[-2:]} (masked)"


def describe(loaded: LoadedSettings) -> list[tuple[str, str, str]]:
    """Rows of (key, effective value, layer) for every leaf setting, secrets masked; the resolved home and
    settings folder first, so "which files and which database?" has one answer."""
    home_layer = f"env {ENV_PREFIX}_HOME" if f"{ENV_PREFIX}_HOME" in os.environ else "default (XDG data directory)"
    dir_layer = (
        f"env {ENV_PREFIX}_SETTINGS_DIR"
        if f"{ENV_PREFIX}_SETTINGS_DIR" in os.environ
        else "search: ./settings, then <home>/settings"
    )
    rows = [
        ("home", msgspec.json.encode(str(loaded.home)).decode(), home_layer),
        (
            "settings_dir",
            msgspec.json.encode(str(loaded.settings_dir) if loaded.settings_dir else None).decode(),
            dir_layer,
        ),
    ]
    for key, value in sorted(_flatten(loaded.settings).items()):
        shown = mask(value) if is_secret(key) else msgspec.json.encode(value).decode()
        layer = (
            "BITINGLIP_ENV" if key == "env" and f"{ENV_PREFIX}_ENV" in os.environ else _source_of(key, loaded.sources)
        )
        if key in ("db.url", "models.dir", "tasks.files_dir") and layer == DEFAULTS_LAYER:
            layer = "defaults (under the home)"
        rows.append((key, shown, layer))
    return rows
