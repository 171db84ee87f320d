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
from typing import Annotated, Any, Literal

import msgspec
from dynaconf import Dynaconf

from bitinglip.core.errors import SettingsError, validation_path

ENV_PREFIX = "BITINGLIP"
DEFAULTS_LAYER = "defaults"
SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey")


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section, frozen=True):
    """The HTTP server: where it listens, and how it logs."""

    # The address to listen on. A loopback address (the default) keeps the server to this machine; any other
    # turns API keys on (`gateway.auth = "auto"`).
    host: str = "127.0.0.1"
    # The port to listen on.
    port: int = 8000
    # The lowest level of log event written.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "auto": readable lines in development, one JSON object per line elsewhere.
    log_format: Literal["auto", "console", "json"] = "auto"
    # One `http.request` log line per request (its id, key id, model, status, tokens and times), except for
    # /health and /ready.
    access_log: bool = True
    # How long an idle keep-alive connection stays open. Longer than clients keep theirs (httpx 5 s, aiohttp
    # 15 s): when both give up at once, a client may send its next request on a connection the server is
    # closing, and that request fails with "server disconnected".
    keep_alive_s: Annotated[int, msgspec.Meta(ge=1)] = 75
    # How long a client may take to send a request's headers, from when its connection opens or its request's
    # first byte arrives; a slower one is closed (a connection trickling its headers holds a socket forever).
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Where the other instances on the same database reach this one (`/api/cluster` lists it). Empty:
    # http://<host>:<port>, with this machine's name in place of an address that listens everywhere (0.0.0.0).
    advertise_url: str = ""


class DbSettings(_Section, frozen=True):
    """The database: the model registry, keys, usage, tasks, files, batches and the instances serving on it."""

    # Empty: `<home>/bitinglip.db` (SQLite). A relative SQLite path is taken relative to the home.
    # `postgresql+asyncpg://user:password@host:5432/name`: several instances share one PostgreSQL database.
    url: str = ""


class ModelsSettings(_Section, frozen=True):
    """The model registry's files and the hub models are pulled from."""

    # Empty: `<home>/models`. A relative path is taken relative to the home.
    dir: str = ""
    # The hub to search and pull from, e.g. a mirror. Default: the Hugging Face hub (or `HF_ENDPOINT`).
    hub_endpoint: str | None = None
    # A hub token, for gated or private models. Default: `HF_TOKEN`. Never logged, shown masked.
    hub_token: str | None = None
    # Never reach the hub: only models already on disk are served; searches and pulls fail at once.
    offline: bool = False


class DeploymentSettings(_Section, frozen=True):
    """One model served by its own engine(s): declared in `cluster.deployments`, or posted to /api/deployments."""

    # A registry name, a local model directory, or a hub id.
    model: str
    # What clients send as `model`; default: the model's registry name.
    name: str | None = None
    # GPU indices to run on; default: the GPUs with the most free memory (ignored on the CPU build).
    devices: list[int] | None = None
    # How many GPUs when `devices` is not given; default: tensor_parallel_size x pipeline_parallel_size.
    device_count: int | None = None
    # Engines serving this name; requests go to the one with the fewest in flight.
    replicas: int = 1
    # Idle time before it is put away: seconds, or "30s", "5m", "1h"; -1 never. Default: declared deployments
    # never, the others `cluster.keep_alive`.
    keep_alive: float | str | None = None
    # vLLM engine arguments over `cluster.engine` (tensor_parallel_size, max_model_len, kv_cache_memory_bytes, ...).
    engine: dict[str, Any] = msgspec.field(default_factory=dict)
    # Requests running at once per engine. Default: the engine's max_num_seqs.
    max_concurrency: int | None = None
    # Requests queued per engine past `max_concurrency` (default: as many again); past both, a fast 503 with
    # Retry-After, before the prompt is tokenized.
    max_queue: int | None = None
    # Prompt tokens waiting for their first step per engine (admitted, not started); past it, a fast 503.
    # Default: max_model_len x max(2, max_num_seqs / 8).
    max_queue_tokens: int | None = None


class ClusterSettings(_Section, frozen=True):
    """The deployments (one model under one name, served by its own vLLM engines) and how they are placed, loaded,
    watched and put away."""

    # Shorthand for one deployment of this model (a registry name, a local directory or a hub id), used when
    # `deployments` is empty; "" declares none (every model then loads on demand).
    model: str = "tiny"
    # Shorthand for a second deployment beside `model`, an embedding model (serves /v1/embeddings), used when
    # `deployments` is empty; "" for none.
    embedding_model: str = ""
    # Declared deployments: started with the server, one at a time, in order, and never put away unless their
    # `keep_alive` says so. Each entry takes the keys of `cluster.deployments[]`.
    deployments: list[DeploymentSettings] = msgspec.field(default_factory=list)
    # vLLM engine arguments for every deployment, checked against AsyncEngineArgs at start-up.
    engine: dict[str, Any] = msgspec.field(default_factory=dict)
    # The most KV cache an engine takes when its engine arguments set no `kv_cache_memory_bytes`: it is sized to what
    # the model can use (max_num_seqs x max_model_len x its bytes per token), this at most. Always a fixed size,
    # never a fraction of the device, so engines started one after the other never misread each other's memory.
    kv_cache_gib: float = 2.0
    # Memory an engine holds beyond its weights and KV cache (activations, CUDA context, the worker itself).
    # Default: 1.5 GiB on the CPU, 2 GiB per GPU; raised at run time to what engines are measured to hold.
    engine_overhead_gib: float | None = None
    # On the CPU build: how much system memory the engines may hold together. Default: 80% of the machine's.
    cpu_memory_budget_gib: float | None = None
    # A request naming a registered model that is not deployed deploys it, and waits up to load_timeout_s.
    load_on_demand: bool = True
    # How long a request waits for its model to load on demand; then a 503 with Retry-After.
    load_timeout_s: float = 300.0
    # Idle time before a deployment that is not declared here is put away (seconds or "5m"; -1 never).
    keep_alive: float | str = "5m"
    # An engine that has not started (and answered its warm-up request) within this long has failed to start.
    startup_timeout_s: float = 900.0
    # Requests in flight but no engine step for this long: the engine is restarted.
    stall_timeout_s: float = 120.0
    # An engine that dies is restarted this many times in a row (waits 2 s, 4 s, 8 s, ...), then `failed`.
    restart_attempts: int = 3
    # The wait before the first restart; it doubles with each restart in a row.
    restart_backoff_s: float = 2.0
    # DELETE /api/deployments/{name} waits this long for requests in flight, then aborts them.
    drain_timeout_s: float = 60.0
    # vLLM's distributed executor: "mp" (one machine) or "ray" (one model across machines).
    executor: Literal["mp", "ray"] = "mp"
    # The Ray cluster to join when executor = "ray" (e.g. "10.0.0.1:6379"); default: RAY_ADDRESS, or a local Ray.
    ray_address: str | None = None
    # How often vLLM's engine processes look for each other's next message while busy, in microseconds, instead of
    # spinning on a core. Default: 100 on the CPU build (the spin took the core the API process and the clients need;
    # docs/performance.md), vLLM's own spin on GPUs. 0: vLLM's own spin everywhere.
    engine_poll_us: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    # On the CPU build, engine cores are forked from a fork server that imported vLLM once, started with the server:
    # an engine starts in seconds instead of importing vLLM afresh (about 12 s on 2 cores). It holds about 650 MB,
    # shared with the engines it forks. Not started where no engine can run (no model declared, nothing loads on
    # demand). false: vLLM spawns each engine core.
    fork_server: bool = True
    # How often this instance renews its row in the database's `instances` table (its URL and deployments); an
    # instance silent for three of these is taken for gone.
    heartbeat_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0


class LimitSettings(_Section, frozen=True):
    """Limits on one model, over every key: requests and tokens (prompt + completion) per minute, at once."""

    # Requests per minute; none: no limit.
    rpm: int | None = None
    # Tokens (prompt + completion) per minute; none: no limit.
    tpm: int | None = None
    # Requests at once; none: no limit.
    max_concurrent: int | None = None


class GatewaySettings(_Section, frozen=True):
    """The OpenAI-compatible edge: API keys, limits, usage and streaming."""

    # API keys on /v1 and /api: "auto" is on unless server.host is a loopback address (127.0.0.1, ::1, localhost).
    auth: bool | Literal["auto"] = "auto"
    # The server refuses to listen on a non-loopback address with auth off, unless this is true.
    allow_public_without_auth: bool = False
    # What answers without a key while auth is on.
    public: list[Literal["health", "ready", "metrics", "docs"]] = msgspec.field(
        default_factory=lambda: ["health", "ready", "docs"]
    )
    # A key revoked or changed by another process (the CLI) stops working here within this many seconds.
    key_cache_s: float = 5.0
    # Usage is counted in memory and written this often (and at a clean stop).
    usage_flush_s: float = 2.0
    # Tokens of one choice a streamed event carries at most (vLLM's stream interval). 1: each token as it is made.
    # "auto": each token while the server sends few streams; up to 8 per event when it sends many, when the API
    # process's work per event is what holds the engines back. The first token always goes at once.
    stream_interval: Annotated[int, msgspec.Meta(ge=1, le=64)] | Literal["auto"] = "auto"
    # Per-model limits over all keys, by the name clients send: [gateway.model_limits.tiny] rpm = 600
    model_limits: dict[str, LimitSettings] = msgspec.field(default_factory=dict)
    # Other names for served models, so a client's built-in names reach a local one: { "claude-*" = "tiny" }. A key
    # is a name or a pattern (`*` and `?`, as in file names); an exact name wins over a pattern, then the first
    # pattern that matches. Keys, limits, usage and metrics see the model it names.
    model_aliases: dict[str, str] = msgspec.field(default_factory=dict)
    # Tokens a response may make when its request names no limit (`max_tokens`, `max_output_tokens`); fewer when
    # the context has less room left. None: all the room the context has left.
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = 4096
    # The most tokens any response may make, whatever its request asks: more is clamped, and the response says so
    # (the `x-max-tokens-clamped` header). None: no ceiling but the context.
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None


class TasksSettings(_Section, frozen=True):
    """Background tasks and OpenAI batches (/api/tasks, /v1/files, /v1/batches)."""

    # Where uploaded and produced files (batch input, output, errors) live. Empty: `<home>/files`.
    files_dir: str = ""
    # While interactive requests are in flight on a deployment, background work takes at most this share of
    # its slots (running requests at once); all of them while it is idle.
    batch_share: float = 0.5
    # Background requests in flight per deployment at most; its engines' slots bound it as well.
    max_in_flight: int = 256
    # Runs of one task before it fails (an engine that died, a model that would not load).
    max_attempts: int = 3
    # The wait before a failed task runs again; it doubles with each attempt.
    retry_backoff_s: float = 2.0
    # A running task's lease: renewed while it runs; one left to expire (the process died) puts it back in line.
    lease_s: float = 30.0
    # Files, finished tasks and finished batches are deleted this many days after they were made or ended.
    retention_days: float = 30.0
    # An uploaded file (a batch input): at most this many bytes (OpenAI's limit).
    max_file_bytes: int = 200 * 1024 * 1024
    # A batch input file: at most this many lines, one request each (OpenAI's limit).
    max_batch_lines: int = 50_000
    # The longest `completion_window` a batch may ask for ("24h" is OpenAI's only value; we take any up to this).
    max_completion_window: str = "7d"


class Settings(_Section, frozen=True):
    """Every setting, one section per module."""

    # The environment: which `settings/<env>.toml` is read. Set by BITINGLIP_ENV, not as a key.
    env: str = "development"
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    db: DbSettings = msgspec.field(default_factory=DbSettings)
    models: ModelsSettings = msgspec.field(default_factory=ModelsSettings)
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    tasks: TasksSettings = msgspec.field(default_factory=TasksSettings)


class LoadedSettings(msgspec.Struct, frozen=True):
    settings: Settings
    # dotted key -> the layer its effective value came from ("defaults", a file path, "env BITINGLIP_...", "cli")
    sources: dict[str, str]
    home: Path  # where the database and the models live unless settings say otherwise
    settings_dir: Path | None  # the folder the setting files were read from; None when none was found


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
