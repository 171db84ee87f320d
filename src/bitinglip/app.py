"""The composition root: the one place that imports every module, builds the components and wires them.

Building does no I/O. `Components.running()` is the one place that starts things, in order, and stops
them in reverse: the server's lifespan and every CLI command go through it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar

from bitinglip.cluster import (
    Adapter,
    Cluster,
    ClusterPlugin,
    EngineLookup,
    Instances,
    advertised_url,
    peft_problems,
    summarize,
    supported_architectures,
)
from bitinglip.core import CorePlugin, Database, LoadedSettings, get_logger, load_settings
from bitinglip.gateway import (
    Accounting,
    Authenticator,
    Background,
    Forwarder,
    GatewayPlugin,
    KeyStore,
    MemoryLimitStore,
    Metrics,
    ModelAliases,
    OpenAIServing,
    OutputLimits,
    Pipeline,
    ResponseStore,
    SharedLimitStore,
    UsageRecorder,
    Vouches,
    auth_enabled,
    deployment_families,
    pull_families,
    task_families,
)
from bitinglip.interfaces import UI_PATH, DashboardPlugin, McpPlugin, RequestLog
from bitinglip.models import HubClient, ModelRegistry, ModelService, ModelsPlugin
from bitinglip.tasks import BatchService, FileStore, TaskQueue, TasksPlugin, TaskStore

log = get_logger(__name__)


class Components:
    """Everything the app is made of, built without I/O; the CLI and tests reach the services here.

    ``engines``: where requests find their engines, in place of the cluster's vLLM engines (tests give a scripted
    stand-in; the cluster is still built and mounted, with whatever deployments the settings declare)."""

    def __init__(self, loaded: LoadedSettings, *, engines: EngineLookup | None = None) -> None:
        settings = loaded.settings
        self.loaded = loaded
        self._engines = engines
        self.settings = settings
        self.db = Database(settings.db)
        models_dir = Path(settings.models.dir)
        self.registry = ModelRegistry(self.db, models_dir)
        # No token here means huggingface_hub's own lookup: HF_TOKEN, then the token saved by `hf auth login`.
        self.hub = HubClient(
            endpoint=settings.models.hub_endpoint, token=settings.models.hub_token, offline=settings.models.offline
        )
        self.models = ModelService(
            self.registry, self.hub, supported_architectures(models_dir / ".cache"), adapter_problems=peft_problems
        )
        self.keys = KeyStore(self.db)
        self.usage = UsageRecorder(self.db, settings.gateway.usage_flush_s)
        self.metrics = Metrics()
        self.request_log = RequestLog()
        server = settings.server
        self.instances = Instances(
            self.db,
            advertised_url(server.host, server.port, server.advertise_url),
            lambda: summarize(self.cluster.status()),
            heartbeat_s=settings.cluster.heartbeat_s,
        )
        # Several instances share a PostgreSQL database: their limits are kept there, exact across all of them.
        self.shared_limits = (
            SharedLimitStore(self.db, self.instances.id, self.instances.live_ids)
            if self.db.dialect == "postgresql"
            else None
        )
        limits = self.shared_limits or MemoryLimitStore()
        self.accounting = Accounting(limits, self.usage, self.metrics, settings.gateway)

    # Built on first use: the cluster asks vLLM about the platform (seconds), which `bitinglip models` never needs.
    @functools.cached_property
    def cluster(self) -> Cluster:
        return Cluster(self.settings.cluster, _Catalog(self.models), run_dir=self.loaded.home / "run")

    @property
    def engines(self) -> EngineLookup:
        return self._engines if self._engines is not None else self.cluster

    @functools.cached_property
    def openai(self) -> OpenAIServing:
        gateway = self.settings.gateway
        limits = OutputLimits(default=gateway.default_max_tokens, ceiling=gateway.max_output_tokens)
        store = ResponseStore(self.db)
        return OpenAIServing(self.engines, store, stream_interval=gateway.stream_interval, limits=limits)

    @functools.cached_property
    def forwarder(self) -> Forwarder:
        return Forwarder(self.instances, self.cluster.has)

    @functools.cached_property
    def pipeline(self) -> Pipeline:
        return Pipeline(self.engines, self.accounting, ModelAliases(self.settings.gateway.model_aliases))

    def authenticator(self) -> Authenticator | None:
        """The key check when auth is on (None when off); SettingsError for a public address without it."""
        if not auth_enabled(self.settings.server, self.settings.gateway):
            return None
        return Authenticator(self.keys, self.settings.gateway, Vouches(self.instances))

    @functools.cached_property
    def queue(self) -> TaskQueue:
        queue = TaskQueue(TaskStore(self.db), self.settings.tasks, _Capacity(self.cluster, self.instances))
        openai = self.openai
        background = Background(self.pipeline, openai.chat, openai.completion, openai.responses)
        for kind, handler in background.kinds().items():
            queue.register(kind, handler)
        return queue

    @functools.cached_property
    def batches(self) -> BatchService:
        files = FileStore(self.db, self.settings.tasks)
        return BatchService(self.db, self.settings.tasks, self.queue, files, models_of=self._models_of)

    async def _models_of(self, owner: str) -> list[str] | None:
        key = await self.keys.get(owner) if owner else None
        return key.models if key is not None else None

    def _metric_sources(self) -> None:
        """What /metrics reads when scraped: the deployments, the task queue, pulls under way."""

        async def deployments() -> Any:
            return deployment_families(self.cluster.status())

        async def tasks() -> Any:
            return task_families(await self.queue.depth())

        async def pulls() -> Any:
            return pull_families(p.status() for p in self.models.pulls.recent() if p.finished_at is None)

        self.metrics.sources = [deployments, tasks, pulls]

    @asynccontextmanager
    async def running(self, *, serve: bool) -> AsyncIterator[Components]:
        """Start what is needed, in order, and stop it in reverse when the block ends (also on error).

        ``serve=False`` (CLI commands): the database and the model service. ``serve=True`` (the server) also
        resumes interrupted pulls, starts the engines, then the task queue (which stops first, putting the
        tasks it was running back in line).
        """
        async with AsyncExitStack() as stack:
            await self.db.start()
            stack.push_async_callback(self._stopped, "database", self.db.stop)
            await self.models.start(resume_pulls=serve)
            stack.push_async_callback(self._stopped, "models", self.models.stop)
            if serve:
                self._metric_sources()
                lag = asyncio.get_running_loop().create_task(self.metrics.watch_loop())
                stack.callback(lag.cancel)
                await self.usage.start()
                stack.push_async_callback(self._stopped, "usage", self.usage.stop)  # the last counts written
                await self.cluster.start()
                stack.push_async_callback(self._stopped, "cluster", self.cluster.stop)
                await self.instances.start()
                stack.push_async_callback(self._stopped, "instance", self.instances.stop)
                if self.shared_limits is not None:
                    await self.shared_limits.start()
                    stack.push_async_callback(self._stopped, "limits", self.shared_limits.stop)
                stack.push_async_callback(self.forwarder.stop)
                await self.queue.start()
                stack.push_async_callback(self._stopped, "tasks", self.queue.stop)
            yield self

    @staticmethod
    async def _stopped(part: str, stop: Callable[[], Any]) -> None:
        await stop()
        log.info("component.stopped", component=part)


class _Catalog:
    """The model registry as the cluster sees it (`cluster.ModelCatalog`): it never imports the models module."""

    def __init__(self, models: ModelService) -> None:
        self.models = models

    async def resolve(self, spec: str) -> tuple[Path, str]:
        return await self.models.resolve_to_load(spec)

    async def loadable(self) -> list[str]:
        return [m.name for m in await self.models.registry.list_models() if m.state == "ready" and not m.adapter]

    async def adapters(self) -> list[Adapter]:
        return [
            Adapter(
                name=m.name,
                base=m.base_model or "",
                path=m.path,
                rank=m.lora_rank or 0,
                target_modules=tuple(m.target_modules or ()),
            )
            for m in await self.models.registry.list_models()
            if m.adapter and m.state == "ready"
        ]


class _Capacity:
    """The cluster as the task queue sees it (`tasks.Capacity`): room per model, and the models it may name."""

    def __init__(self, cluster: Cluster, instances: Instances) -> None:
        self.cluster = cluster
        self.instances = instances

    def slots(self, target: str) -> int | None:
        slots = self.cluster.capacity(target)[0]
        if slots is None and not self.cluster.settings.load_on_demand and target in self.instances.elsewhere:
            return 0  # never loaded here, and served by another instance: its lines are for that one
        return slots

    def interactive(self, target: str) -> int:
        return self.cluster.capacity(target)[1]

    async def known(self) -> set[str]:
        """What this instance serves, and what the other live instances on the database serve: a batch made
        here may name a model only another instance runs (its queue takes those lines)."""
        return {m.name for m in await self.cluster.served_models()} | self.instances.elsewhere


def create_app(loaded: LoadedSettings | None = None, *, components: Components | None = None) -> Litestar:
    """The app; ``components`` when the caller built them (tests, to reach the services), else from ``loaded``."""
    components = components or Components(loaded or load_settings())
    loaded = components.loaded
    auth = components.authenticator()
    components.cluster.check()

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        async with components.running(serve=True):
            yield

    return Litestar(
        plugins=[
            CorePlugin(
                access_log=loaded.settings.server.access_log,
                observers=[components.metrics.observe_http, components.request_log.observe],
                home=UI_PATH,
            ),
            ModelsPlugin(components.models),
            ClusterPlugin(components.cluster, components.instances),
            GatewayPlugin(components.openai, components.pipeline, components.keys, auth, components.forwarder),
            TasksPlugin(components.batches),
            DashboardPlugin(components.request_log),
            McpPlugin(host=loaded.settings.server.host, auth=auth is not None),
        ],
        lifespan=[lifespan],
        logging_config=None,  # ours (structlog) is set up by the CLI; Litestar's would replace it
    )
