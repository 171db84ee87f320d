"""The composition root: the one place that imports every module, builds the components and wires them.

Nothing here does I/O: components start in their plugins' lifespans, in plugin order, and stop in reverse.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from litestar import Litestar

from bitinglip.cluster import Cluster, ClusterPlugin, supported_architectures
from bitinglip.core import CorePlugin, Database, LoadedSettings, load_settings
from bitinglip.gateway import GatewayPlugin, OpenAIServing
from bitinglip.models import HubClient, ModelRegistry, ModelService, ModelsPlugin


class Components:
    """Everything the app is made of, built without I/O; the CLI and tests reach the services here."""

    def __init__(self, loaded: LoadedSettings, on_fatal: Callable[[str], None] | None = None) -> None:
        settings = loaded.settings
        self.settings = settings
        self.on_fatal = on_fatal
        self.db = Database(settings.db)
        models_dir = Path(settings.models.dir)
        self.registry = ModelRegistry(self.db, models_dir)
        # No token here means huggingface_hub's own lookup: HF_TOKEN, then the token saved by `hf auth login`.
        self.hub = HubClient(
            endpoint=settings.models.hub_endpoint, token=settings.models.hub_token, offline=settings.models.offline
        )
        self.models = ModelService(self.registry, self.hub, supported_architectures(models_dir / ".cache"))

    # Built on first use: the cluster asks vLLM about the platform (seconds), which `bitinglip models` never needs.
    @functools.cached_property
    def cluster(self) -> Cluster:
        return Cluster(self.settings.cluster, self._resolve_and_mark, on_fatal=self.on_fatal)

    @functools.cached_property
    def serving(self) -> OpenAIServing:
        return OpenAIServing(self.cluster, self.settings.gateway)

    async def _resolve_and_mark(self, spec: str) -> tuple[Path, str]:
        path, name = await self.models.resolve_for_serving(spec)
        await self.models.mark_serving(name)
        return path, name


def create_app(loaded: LoadedSettings | None = None, on_fatal: Callable[[str], None] | None = None) -> Litestar:
    loaded = loaded or load_settings()
    parts = Components(loaded, on_fatal)
    parts.cluster.check()
    app = Litestar(
        plugins=[
            CorePlugin(parts.db),
            ModelsPlugin(parts.models),
            ClusterPlugin(parts.cluster),
            GatewayPlugin(parts.serving, access_log=loaded.settings.server.access_log),
        ],
        logging_config=None,  # ours (structlog) is set up by the CLI; Litestar's would replace it
    )
    app.state.components = parts
    return app
