"""The cluster: the registry of deployments, where requests find their engine, and their supervisor (health.py).

Every engine start, stop, sleep and wake runs under one lock, so engines start one at a time and each placement
sees the memory the others really hold. Loads run as tasks of their own: a request waits for one (bounded by
`load_timeout_s`) but never cancels it. The supervisor's watch loop, once a second, restarts engines that died or
stalled (with backoff, then `failed`), puts idle deployments away after their keep_alive, and measures their memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from bitinglip.cluster.adapters import AdapterBook
from bitinglip.cluster.deployment import Deployment, TimelineEvent, keep_alive_seconds
from bitinglip.cluster.devices import Device, list_devices
from bitinglip.cluster.health import Supervisor
from bitinglip.cluster.placement import (
    DEFAULT_OVERHEAD_GIB,
    GIB,
    Holder,
    InsufficientMemory,
    MemoryEstimate,
    place_cpu,
    place_gpus,
    weights_bytes,
)
from bitinglip.cluster.placement import device_count as args_device_count
from bitinglip.cluster.protocol import Adapter, EngineFactory, Lease, ManagedEngine, ServedModel
from bitinglip.cluster.reaper import EngineRecords
from bitinglip.cluster.status import DeploymentStatus, Readiness, deployment_status, readiness, served_model
from bitinglip.cluster.vllm import (
    LORA_ARGS,
    VllmEngine,
    check_engine_args,
    effective_engine_args,
    engine_env,
    fit_context,
    is_cpu_platform,
    kv_cache_bytes,
    lora_args,
    lora_bytes,
    uncovered,
)
from bitinglip.core import (
    ClusterSettings,
    Conflict,
    DeploymentSettings,
    Feed,
    InvalidInput,
    NotFound,
    SettingsError,
    Unavailable,
    get_logger,
)

log = get_logger(__name__)

# POST /api/deployments answers at once when the model is unknown or cannot fit, if that is known this fast.
PLACEMENT_WAIT_S = 2.0
TIMELINE_SIZE = 500


class ModelCatalog(Protocol):
    """What the cluster needs of the model registry (given by the app: cluster never imports models)."""

    async def resolve(self, spec: str) -> tuple[Path, str]:
        """A registry name, directory or hub id -> (local path, registry name); may pull first."""
        ...

    async def loadable(self) -> list[str]:
        """Registered models ready to load (not adapters)."""
        ...

    async def adapters(self) -> list[Adapter]:
        """Every registered LoRA adapter, with its base."""
        ...


def _vllm_engine(path: Path, name: str, args: dict[str, Any], env: dict[str, str]) -> ManagedEngine:
    return VllmEngine(path, name, args, env)


class Cluster:
    def __init__(
        self,
        settings: ClusterSettings,
        catalog: ModelCatalog,
        *,
        run_dir: Path,
        factory: EngineFactory = _vllm_engine,
        probe_devices: Callable[[], list[Device]] = list_devices,
        cpu_platform: bool | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.factory = factory
        self.probe_devices = probe_devices
        self.records = EngineRecords(run_dir)
        self.deployments: dict[str, Deployment] = {}
        # Every deployment's state changes, for the dashboard's timeline (the log has them too).
        self.timeline: Feed[TimelineEvent] = Feed(TIMELINE_SIZE)
        self._cpu_platform = cpu_platform
        self._lock = asyncio.Lock()  # engine starts, stops, sleeps, wakes: one at a time
        self._tasks: set[asyncio.Task[Any]] = set()
        self.adapters = AdapterBook(catalog.adapters)
        self.health = Supervisor(
            settings,
            self.deployments,
            lock=self._lock,
            records=self.records,
            probe_devices=probe_devices,
            cpu=lambda: self.cpu,
            spawn=self._spawn,
        )

    # -- settings

    @property
    def cpu(self) -> bool:
        if self._cpu_platform is None:
            self._cpu_platform = is_cpu_platform()
        return self._cpu_platform

    def declared(self) -> list[tuple[str, DeploymentSettings]]:
        """The deployments the settings declare, each with the setting that declares it."""
        if self.settings.deployments:
            return [(f"cluster.deployments[{i}]", spec) for i, spec in enumerate(self.settings.deployments)]
        shorthands = (
            ("cluster.model", self.settings.model),
            ("cluster.embedding_model", self.settings.embedding_model),
        )
        return [(key, DeploymentSettings(model=model)) for key, model in shorthands if model]

    def check(self) -> None:
        """Checks that need no I/O, run before the server binds its port."""
        check_engine_args(self.settings.engine)
        names: set[str] = set()
        for i, (_, spec) in enumerate(self.declared()):
            check_engine_args(spec.engine, f"cluster.deployments.{i}.engine")
            name = self._name_for(spec)
            if name in names:
                raise SettingsError(f"setting `cluster.deployments`: two deployments are named {name!r}")
            names.add(name)
            if spec.keep_alive is not None:
                keep_alive_seconds(spec.keep_alive, f"cluster.deployments.{i}.keep_alive")
        keep_alive_seconds(self.settings.keep_alive, "cluster.keep_alive")

    @staticmethod
    def _name_for(spec: DeploymentSettings) -> str:
        if spec.name:
            return spec.name
        path = Path(spec.model).expanduser()
        return path.name if spec.model.startswith(("/", ".", "~")) or path.is_dir() else spec.model

    # -- lifecycle

    async def start(self) -> None:
        """Reap engines a dead server left behind, then load the declared deployments in the background."""
        reaped = await asyncio.to_thread(self.records.reap_orphans)
        if reaped:
            log.warning("cluster.reaped_orphans", pids=reaped)
        declared = [self._add(spec, source=source) for source, spec in self.declared()]
        self._spawn(self._load_in_order(declared))
        self._spawn(self.health.watch())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # One after another: two engines told to stop at once on two cores both outlived vLLM's 5 s grace and
        # were force-killed (a warning on every Ctrl-C); in turn each exits cleanly within it.
        for d in self.deployments.values():
            await d.stop_engines()
        for d in self.deployments.values():
            if d.state not in ("failed", "stopped"):
                d.to("stopped", "the server stopped")
        await asyncio.to_thread(self.records.remove)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _add(self, spec: DeploymentSettings, *, source: str | None = None, on_demand: bool = False) -> Deployment:
        """A deployment of ``spec``, declared by the setting ``source`` (None: added at run time)."""
        name = self._name_for(spec)
        if name in self.deployments:
            raise Conflict(f"a deployment named {name!r} exists already", param="name", code="deployment_exists")
        if spec.replicas < 1:
            raise SettingsError("replicas must be at least 1", param="replicas")
        declared = source is not None
        keep_alive = spec.keep_alive if spec.keep_alive is not None else (-1 if declared else self.settings.keep_alive)
        deployment = Deployment(
            name,
            spec,
            source=source,
            on_demand=on_demand,
            keep_alive_s=keep_alive_seconds(keep_alive),
            engine_args=effective_engine_args(self.settings, spec.engine),
            env=engine_env(self.settings),
            factory=self.factory,
            settings=self.settings,
            timeline=self.timeline,
        )
        self.deployments[name] = deployment
        return deployment

    async def _load_in_order(self, deployments: list[Deployment]) -> None:
        for d in deployments:
            await self._begin_load(d)

    def _begin_load(self, d: Deployment) -> asyncio.Task[None]:
        """The load (or wake) under way for ``d``, started if there is none."""
        if d.task is None or d.task.done():
            if d.state != "loading":
                d.to("loading", "waking" if d.state == "sleeping" else "starting")
            d.busy_with(self._spawn(self._load(d)))
        assert d.task is not None
        return d.task

    async def _load(self, d: Deployment) -> None:
        try:
            if d.path is None:
                d.progress("resolving the model")
                path, model_name = await self.catalog.resolve(d.spec.model)
                d.resolved(path, model_name)
            async with self._lock:
                if self.deployments.get(d.name) is not d or d.state != "loading":
                    return  # removed while it waited
                await self._place(d)
                if any(r.state == "sleeping" for r in d.replicas):
                    d.progress("waking")
                    await d.wake()
                d.progress("starting the engine" if d.spec.replicas == 1 else "starting the engines")
                await d.start_engines()
            # Recorded before it is called ready: a server killed the moment it says so has its engines named.
            await self.health.engines_changed(went=False)
            d.to("ready")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await d.load_failed(exc)
            if d.refusal is not None and d.on_demand and self.deployments.get(d.name) is d:
                # Refused before an engine started: the next request tries again (memory may have been freed).
                self.deployments.pop(d.name)

    # -- placement

    def _overhead(self) -> int:
        configured = self.settings.engine_overhead_gib
        default = DEFAULT_OVERHEAD_GIB["cpu" if self.cpu else "gpu"] if configured is None else configured
        return max(int(default * GIB), self.health.overhead_seen if configured is None else 0)

    def _holders(self, but: Deployment) -> list[Holder]:
        return [
            Holder(
                name=d.name,
                kind=d.placement.kind,
                devices=d.placement.devices,
                bytes_per_device=d.estimate.total(1) * len(d.replicas)
                if d.placement.kind == "cpu"
                else d.estimate.per_device(len(d.placement.devices) // len(d.replicas)),
                pids=[pid for r in d.replicas if r.engine for pid in r.engine.pids],
                evictable=d.evictable,
                last_used=d.last_used,
            )
            for d in self.deployments.values()
            if d is not but and d.placement is not None and d.estimate is not None
        ]

    async def _place(self, d: Deployment) -> None:
        """Pick devices for ``d`` (under the lock), putting away the least recently used idle deployments when
        that makes room; refuse with the shortfall when nothing would, without evicting anything."""
        assert d.path is not None
        path = d.path
        if d.estimate is None:
            d.engine_args = await asyncio.to_thread(fit_context, d.engine_args, d.spec.engine, path)
            # LoRA on where adapters are registered for the model, sized for them (or where the settings ask).
            d.engine_args = lora_args(d.engine_args, await self.adapters.of(d.model_name or ""))
            kv_cache, sized = await asyncio.to_thread(kv_cache_bytes, self.settings, d.engine_args, path)
            d.estimated(
                MemoryEstimate(
                    weights_bytes=await asyncio.to_thread(weights_bytes, path),
                    kv_cache_bytes=kv_cache,
                    overhead_bytes=self._overhead(),
                    lora_bytes=await asyncio.to_thread(lora_bytes, path, d.engine_args, cpu=self.cpu),
                ),
                sized_kv_cache=sized,
            )
        need = d.estimate
        assert need is not None
        while True:
            devices = await asyncio.to_thread(self.probe_devices)
            holders = self._holders(d)
            try:
                if self.cpu:
                    cpu = next(x for x in devices if x.kind == "cpu")
                    budget = self.settings.cpu_memory_budget_gib
                    budget_bytes = int(budget * GIB) if budget is not None else int(cpu.memory_total_bytes * 0.8)
                    d.placed(place_cpu(d.name, need, cpu, budget_bytes, holders, len(d.replicas)))
                else:
                    gpus = [x for x in devices if x.kind == "gpu"]
                    count = d.spec.device_count or args_device_count(d.engine_args)
                    d.placed(place_gpus(d.name, need, gpus, d.spec.devices, count, holders, len(d.replicas)))
                return
            except InsufficientMemory as refusal:
                victims = sorted((h for h in holders if h.evictable), key=lambda h: h.last_used)
                if sum(h.bytes_per_device for h in victims) < refusal.short_bytes:
                    raise
                victim = self.deployments[victims[0].name]
                log.info("deployment.evicting", deployment=victim.name, for_deployment=d.name)
                await victim.evict(f"evicted to make room for {d.name}")

    # -- requests

    def has(self, model: str) -> bool:
        """Whether a request for ``model`` is this instance's to serve: a deployment of it (by name or model, in any
        state) or an adapter whose base one serves."""
        if model in self.deployments or self.adapters.known(model) is not None:
            return True
        return any(model == d.model_name for d in self.deployments.values())

    def capacity(self, model: str) -> tuple[int | None, int]:
        """(requests ``model``'s engines run at once, None while it is not serving; interactive ones in flight).
        An adapter's are its base's."""
        d = self.deployments.get(model)
        if d is None and (adapter := self.adapters.known(model)) is not None:
            d = self._serving(adapter.base)
        if d is None:
            return None, 0
        return d.slots(), d.in_flight - d.background

    def _serving(self, model_name: str) -> Deployment | None:
        """The deployment of the registered model ``model_name`` (the one ready, if several serve it)."""
        found = [d for d in self.deployments.values() if d.state != "draining" and model_name in (d.model_name, d.name)]
        return next((d for d in found if d.state == "ready"), found[0] if found else None)

    async def acquire(self, model: str, keep_alive: float | str | None = None, *, background: bool = False) -> Lease:
        d = self.deployments.get(model)
        if d is None and (adapter := await self.adapters.get(model)) is not None:
            return await self._acquire_adapter(adapter, keep_alive, background)
        if d is None:
            d = await self._on_demand(model)
        await self._until_ready(d, model, keep_alive)
        return d.lease(background)

    async def _on_demand(self, model: str) -> Deployment:
        """A deployment added for a registered model a request names (load_on_demand), loading; NotFound otherwise."""
        if not self.settings.load_on_demand or model not in await self.catalog.loadable():
            raise NotFound(
                f"the model `{model}` does not exist or is not served here; GET /v1/models lists what is",
                param="model",
                code="model_not_found",
            )
        d = self.deployments.get(model)
        if d is None:
            d = self._add(DeploymentSettings(model=model), on_demand=True)
            log.info("deployment.on_demand", deployment=model)
            self._begin_load(d)
        return d

    async def _until_ready(self, d: Deployment, model: str, keep_alive: float | str | None) -> None:
        """Return once ``d`` is ready, loading (or waking) it first if need be, within `load_timeout_s`."""
        if keep_alive is not None:
            d.set_keep_alive(keep_alive_seconds(keep_alive))
        deadline = time.monotonic() + self.settings.load_timeout_s
        loaded = False
        while True:
            if d.state == "ready":
                return
            if d.state in ("stopped", "sleeping") and loaded:  # the load this request waited for did not work
                raise Unavailable(f"model {model} is {d.state}: {d.reason}", retry_after=30, code="model_not_loaded")
            if d.state in ("stopped", "sleeping"):
                if (task := d.task) is not None and not task.done():  # its put-away is still finishing: then load
                    await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
                    if task.done():
                        continue
                    raise Unavailable(f"model {model} is {d.state}: {d.reason}", retry_after=5, code="model_loading")
                self._begin_load(d)
                loaded = True
            elif d.state != "loading" or d.restarting:
                raise d.unavailable()
            left = deadline - time.monotonic()
            if left <= 0:
                waited = round(time.monotonic() - (d.loading_since or deadline))
                raise Unavailable(
                    f"model {model} is still loading ({waited} s so far); retry shortly",
                    retry_after=10,
                    code="model_loading",
                )
            await d.changed(left)

    async def _acquire_adapter(self, adapter: Adapter, keep_alive: float | str | None, background: bool) -> Lease:
        """A lease on an engine of the adapter's base that generates with the adapter (the base loaded on demand
        if need be). Engines that cannot serve it (started without LoRA, or for smaller ranks or other modules) are
        restarted with LoRA sized for every adapter of the base, as soon as no request is in flight on them;
        until then the request is told to retry."""
        d = self._serving(adapter.base)
        if d is None:
            try:
                d = await self._on_demand(adapter.base)
            except NotFound:
                raise NotFound(
                    f"`{adapter.name}` is a LoRA adapter of {adapter.base}, which is not served here: deploy it",
                    param="model",
                    code="model_not_found",
                ) from None
        await self._until_ready(d, d.name, keep_alive)
        if (why := uncovered(d.engine_args, adapter)) is not None:
            # What a restart would start with: the settings' own arguments, sized for the base's adapters.
            wanted = lora_args(
                effective_engine_args(self.settings, d.spec.engine), await self.adapters.of(adapter.base)
            )
            self._refuse_uncovered(adapter, d, uncovered(wanted, adapter))
            if d.in_flight:
                raise Unavailable(
                    f"adapter {adapter.name} cannot run on model {d.name} yet: {why}. Its engines restart with LoRA "
                    "for it as soon as their requests in flight finish; retry shortly",
                    retry_after=5,
                    code="adapter_pending",
                )
            await self._reconfigure(d, f"restarting for adapter {adapter.name}: {why}")
            await self._until_ready(d, d.name, keep_alive)
            self._refuse_uncovered(adapter, d, uncovered(d.engine_args, adapter))
        return d.lease(background, adapter)

    @staticmethod
    def _refuse_uncovered(adapter: Adapter, d: Deployment, why: str | None) -> None:
        """A 400 naming the settings when the engines (as they would start) cannot serve ``adapter``."""
        if why is not None:
            raise InvalidInput(
                f"adapter {adapter.name} cannot run on model {d.name}: {why}; change the deployment's engine settings "
                f"({', '.join(LORA_ARGS)})",
                param="model",
                code="adapter_not_served",
            )

    async def _reconfigure(self, d: Deployment, reason: str) -> None:
        """Stop ``d``'s idle engines and load it again with its arguments worked out anew (LoRA for new adapters)."""
        async with self._lock:
            if d.state != "ready" or d.in_flight or self.deployments.get(d.name) is not d:
                return  # another request did it, or it is busy again (it is then retried)
            await d.evict(reason)
            d.reconfigured(effective_engine_args(self.settings, d.spec.engine))
        self._begin_load(d)
        await self.health.engines_changed(went=True)

    async def served_models(self) -> list[ServedModel]:
        deployments = [d for d in self.deployments.values() if d.state != "draining"]
        served = [served_model(d) for d in deployments]
        adapters = await self.adapters.all()
        on_demand = await self.catalog.loadable() if self.settings.load_on_demand else []
        for a in adapters:
            d = self._serving(a.base)
            if d is not None:
                served.append(served_model(d, a.name))
            elif a.base in on_demand:
                served.append(ServedModel(name=a.name, state="on_demand", parent=a.base))
        served += [ServedModel(name=name, state="on_demand") for name in on_demand if name not in self.deployments]
        return served

    # -- the admin API

    async def deploy(self, spec: DeploymentSettings) -> Deployment:
        """Add a deployment and start loading it; a refusal that comes quickly (no such model, no room) is raised."""
        check_engine_args(spec.engine, "engine")
        d = self._add(spec)  # a bad keep_alive or a name taken is refused here
        task = self._begin_load(d)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), PLACEMENT_WAIT_S)
        if d.refusal is not None:
            self.deployments.pop(d.name, None)
            raise d.refusal
        return d

    def get(self, name: str) -> Deployment:
        d = self.deployments.get(name)
        if d is None:
            raise NotFound(f"no deployment named {name!r}; GET /api/deployments lists them", param="name")
        return d

    def undeploy(self, name: str) -> Deployment:
        """Stop taking requests for ``name``, let those in flight finish (bounded), then stop and remove it."""
        d = self.get(name)
        if d.state != "draining":
            d.drain("removed by request")
            self._spawn(self._drain(d))
        return d

    async def _drain(self, d: Deployment) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while d.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if d.in_flight:
            log.warning("deployment.drain_timeout", deployment=d.name, aborted=d.in_flight)
        async with self._lock:
            await d.stop_engines()
        self.deployments.pop(d.name, None)
        d.removed()
        await self.health.engines_changed(went=True)

    def status(self) -> list[DeploymentStatus]:
        return [deployment_status(d, self.adapters.names_of(d.model_name)) for d in self.deployments.values()]

    def readiness(self) -> Readiness:
        """What `/ready` answers: every declared deployment serves, or is put away and loads on the next request."""
        return readiness(list(self.deployments.values()))

    @property
    def ready(self) -> bool:
        return self.readiness().ready
