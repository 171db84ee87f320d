"""Every setting: one frozen section per module, each field's comment its documentation (the settings reference
page is generated from them: scripts/settings_reference.py). How they are read and layered: `layers.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec


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
